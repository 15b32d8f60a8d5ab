"""Offline stand-in for @rules_java//java:defs.bzl.

Bazel 4's @bazel_tools BUILD files load the Java rules from @rules_java, which
Bazel would otherwise download. The rules are built into Bazel 4, so the native
ones are re-exported. vlax builds no Java.
"""

java_binary = native.java_binary
java_import = native.java_import
java_library = native.java_library
java_lite_proto_library = native.java_lite_proto_library
java_plugin = native.java_plugin
java_proto_library = native.java_proto_library
java_runtime = native.java_runtime
java_test = native.java_test
java_toolchain = native.java_toolchain
