"""Start the DSFormer VPR node as a lifecycle node, then configure and activate it.

ros2 launch dsformer_ros vpr.launch.py params_file:=/path/vpr.yaml namespace:=robot1 use_sim_time:=true \
    image_topic:=/camera/image_raw/compressed input_type:=compressed
All behaviour lives in the node; this file only passes parameters and drives the lifecycle (configure, then
activate once the node reports 'inactive'). The node's own autostart is turned off here to avoid a double start.
When configure fails (or any transition errors) the node logs the reason and the launch ends instead of waiting for
ever with an unconfigured node. A SIGINT to launch alone (kill -INT, timeout -s INT, a process supervisor) reaches the
node too: launch run from a terminal passes none on (it expects the terminal to have sent the node its own), so the
node would otherwise keep running until launch escalates to SIGTERM 5 s later.
"""
import signal

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, RegisterEventHandler, Shutdown
from launch.event_handlers import OnShutdown
from launch.events import matches_action
from launch.events.process import SignalProcess
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition


def generate_launch_description() -> LaunchDescription:
    """Launch arguments, the lifecycle node and the configure -> activate sequence."""
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("dsformer_ros"), "config", "vpr.yaml"]),
            description="parameter file of the VPR node",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the VPR node"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw", description="camera topic"),
        DeclareLaunchArgument(
            "input_type", default_value="raw", description="raw (sensor_msgs/Image) or compressed (CompressedImage)"
        ),
    ]
    node = LifecycleNode(
        package="dsformer_ros",
        executable="vpr_node",
        name="vpr_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                "image_topic": LaunchConfiguration("image_topic"),
                "input_type": LaunchConfiguration("input_type"),
                "autostart": False,
            },
        ],
    )
    configure = EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_CONFIGURE)
    )
    activate_when_inactive = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            start_state="configuring",
            goal_state="inactive",
            entities=[
                EmitEvent(
                    event=ChangeState(
                        lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_ACTIVATE
                    )
                )
            ],
        )
    )
    end_when_unconfigured = [
        RegisterEventHandler(
            OnStateTransition(
                target_lifecycle_node=node,
                start_state=start_state,
                goal_state="unconfigured",
                entities=[
                    LogInfo(msg=f"vpr_node: {what} (the reason is in the node's error line above); ending the launch"),
                    Shutdown(reason=f"vpr_node: {what}"),
                ],
            )
        )
        for start_state, what in (("configuring", "configure failed"), ("errorprocessing", "a transition failed"))
    ]
    interrupt_on_shutdown = RegisterEventHandler(
        OnShutdown(on_shutdown=[EmitEvent(event=SignalProcess(signal_number=signal.SIGINT,
                                                              process_matcher=matches_action(node)))])
    )
    return LaunchDescription(
        [*arguments, node, activate_when_inactive, *end_when_unconfigured, interrupt_on_shutdown, configure]
    )
