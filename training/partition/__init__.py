"""Block clustering (the paper) and grid partitions of geo-tagged positions into classes and groups; `partition`,
`bench-partition`.
"""
