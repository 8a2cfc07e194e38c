"""Reference maps: the on-disk PlaceMap (manifest, descriptors, metadata, FAISS index) and building one from a
descriptor method.
"""
