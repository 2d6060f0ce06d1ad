"""Interop: tools in and out of llama.cpp (GGUF control vectors), repeng and `steering-vectors`.

Layer-index convention (one for all three formats, checked against each tool's own source):

- **llama.cpp** — `common/common.cpp`, `common_control_vector_load_one`: a tensor `direction.k` must be
  1-D float32; `k == 0` is rejected ("invalid (zero) direction tensor layer index"); its data goes to
  slot `k - 1` of a buffer that starts at layer 1, and duplicate `k` are summed. `src/llama-adapter.cpp`,
  `llama_adapter_cvec::init` / `apply`: `tensors[0]` is always null ("there's never a tensor for layer
  0"), `tensors[k]` gets slot `k - 1`, and `apply_to(ctx, cur, il)` adds `tensors[il]`. Every model graph
  (e.g. `src/models/llama.cpp`) calls `cur = build_cvec(cur, il)` right after the block's last residual
  add (`cb(cur, "l_out", il)`), at every position, prompt included. So `direction.k` is added to the
  output of block k (0-based) = our `blocks.{k}.hook_resid_post`, and block 0 cannot be steered.
  (Read at ggml-org/llama.cpp commits 00758e06 / 0650ea8c / 069be0ae.)
- **repeng** (0.4.0) — `ControlVector.directions[k]` is read from `hidden_states[k + 1]` (the output of
  `model.layers[k]`) and added by `ControlModule` to the output of `model.layers[k]`: the same point,
  0-based. `export_gguf` / `import_gguf` write and read `direction.{k}` with that k unchanged, so a
  repeng file and a llama.cpp file share the index; repeng also accepts k = 0.
- **steering-vectors** (0.12.2) — `SteeringVector(layer_activations={k: v}, layer_type="decoder_block")`
  hooks the forward output of the k-th decoder block (`model.layers.{k}`): again resid_post of block k.

So our library's `layer` column is written unchanged as the direction index everywhere.
"""
