"""Print what CMake needs to know about the active torch, one `key=value` per line (lists joined with commas).

Read at configure time instead of torch's own CMake package: that package looks for the
CUDA toolkit and nvrtc even for CPU-only builds against a CUDA torch.
"""

import torch
import torch.utils.cpp_extension as ext

print("version=" + torch.__version__.split("+")[0])
print("include=" + ",".join(ext.include_paths()))
print("libdir=" + ",".join(ext.library_paths()))
print("cxx11_abi=" + str(int(torch._C._GLIBCXX_USE_CXX11_ABI)))
print("cuda=" + (torch.version.cuda or ""))
