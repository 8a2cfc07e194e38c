"""The ROS-free localization core: descriptor method + map -> ranked candidates and fixes with covariance; the
newest-frame worker.
"""
