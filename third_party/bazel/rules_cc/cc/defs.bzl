"""Offline stand-in for @rules_cc//cc:defs.bzl.

Bazel 4's own @bazel_tools BUILD files load the C++ rules from @rules_cc, which
Bazel would otherwise download from GitHub. The rules are built into Bazel 4
itself, so re-exporting the native ones is all @bazel_tools needs. vlax has no
C++ code; nothing here is used to build anything of ours.
"""

cc_binary = native.cc_binary
cc_import = native.cc_import
cc_library = native.cc_library
cc_proto_library = native.cc_proto_library
cc_test = native.cc_test
cc_toolchain = native.cc_toolchain
cc_toolchain_suite = native.cc_toolchain_suite
fdo_prefetch_hints = native.fdo_prefetch_hints
fdo_profile = native.fdo_profile
objc_import = native.objc_import
objc_library = native.objc_library
