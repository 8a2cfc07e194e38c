"""The ROS 2 adapter (the only rclpy code): lifecycle node, its parameter table, message conversion, frame
decoding, entry points.
"""
