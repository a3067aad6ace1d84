// The one translation unit of xtrain_torch_pch, the target whose precompiled torch/torch.h every LibTorch
// target reuses (CMakeLists.txt). It compiles the header and nothing else.
