"""Recall@N evaluation: data set readers, ground truth and recall, the backbone-GeM baseline, reports and figures;
`eval`.
"""
