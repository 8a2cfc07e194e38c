"""EigenPlaces-style training: config, data (classes, crops, epoch plans), LMCL loss, run state and resume, the
training loop.
"""
