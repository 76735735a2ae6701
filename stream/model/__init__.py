"""The classifier model: build the convnext-tiny IR, import its checkpoint, run any classifier IR.

Modules: `builder` (OpenVINO graph + IR writing), `checkpoint` (official .pth reader without
torch, generated weights, download), `runtime` (load/validate/compile an IR for u8 BGR
frames, softmax top-k), `labels`, `info` (parameter/FLOP counts), `evaluate` (accuracy),
`cli` (the `stream model` commands). Import submodules directly; this package stays light.
"""
