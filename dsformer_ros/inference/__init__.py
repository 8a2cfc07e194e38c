"""Images to descriptors: image decoding, preprocessing, precisions, the batched extractor, descriptor methods,
`describe` and `bench`.
"""
