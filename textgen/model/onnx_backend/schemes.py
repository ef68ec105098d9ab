"""How many bits each part of the graph gets per QUANTIZE value (quantize.py applies them):
- int8: everything 8-bit, symmetric (zero point 128).
- int4: the MLPs' MatMuls 4-bit with a zero point per block; attention, the LM head and the embedding
  8-bit. Perplexity of SmolLM2-135M-Instruct (tests/test_real_weights_quality.py's passage; float32
  23.67, int8 +0.5%), each change alone from all layers 4-bit with zero points (+20.5%): symmetric
  +26.6%; the head 4-bit too +34.7%; the embedding 4-bit too +21.9%; down_proj kept 8-bit +14.1%;
  attention kept 8-bit +8.0% (this scheme; symmetric +13.7%); attention and down_proj 8-bit +5.0%.
  Attention is a sixth of a Llama-3.2-1B layer's weights (grouped K/V), a quarter of SmolLM2's.
  SmolLM2's weights come from a Q4_1 GGUF file, so they are rounded a second time, onto another grid:
  a harsh case for any 4 bits (docs/models.md, int4 weights).
The token embedding's table is 8-bit under both (embedding_table.py).
"""

from typing import NamedTuple


class Scheme(NamedTuple):
    attention: int  # bits of the q/k/v and output projections (GPT-2: c_attn, attn.c_proj)
    mlp: int  # bits of the MLP's projections (gate/up and down; GPT-2: c_fc, mlp.c_proj)
    head: int  # bits of the LM head
    symmetric: bool  # 4-bit blocks: symmetric (one scale) or with a zero point (scale and offset)


SCHEMES = {
    "int8": Scheme(attention=8, mlp=8, head=8, symmetric=True),
    "int4": Scheme(attention=8, mlp=4, head=8, symmetric=False),
}
