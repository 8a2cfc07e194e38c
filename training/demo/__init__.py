"""The end-to-end demo (`dsformer-vpr demo`): synthetic drives, training, maps, the node replaying a drive."""
