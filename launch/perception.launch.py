"""Launch the atdt_perception node: ``ros2 launch atdt_ros perception.launch.py model:=DIR``.

Arguments: ``model`` (artifact directory written by ``atdt_train export``), ``params_file``
(defaults to the installed config/perception.yaml), ``image`` and ``camera_info`` (camera topics
remapped onto the node's ``image`` / ``camera_info`` inputs), ``namespace`` and ``autostart``
(``false`` leaves the lifecycle node unconfigured for a lifecycle manager).
"""

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

import os


def generate_launch_description() -> LaunchDescription:
    """The perception node with its params file, model path, topic remaps and namespace."""
    default_params = os.path.join(get_package_share_directory("atdt_ros"), "config",
                                  "perception.yaml")
    arguments = [
        DeclareLaunchArgument("model", description="exported chain directory (atdt_train export)"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS 2 parameters file for atdt_perception"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="camera image topic (sensor_msgs/Image)"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info",
                              description="camera_info topic matching the image"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and its outputs"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="walk the lifecycle node to active by itself (false: "
                                          "a lifecycle manager configures and activates it)"),
    ]
    node = Node(
        package="atdt_ros",
        executable="atdt_perception",
        name="atdt_perception",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"),
                    {"model_path": LaunchConfiguration("model"),
                     "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool)}],
        remappings=[("image", LaunchConfiguration("image")),
                    ("camera_info", LaunchConfiguration("camera_info"))],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription(arguments + [node])
