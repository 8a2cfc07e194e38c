"""Drive logs and image folders: reading rosbag2/ROS 1 bags, writing rosbag2 drives, the '@' file-name format."""
