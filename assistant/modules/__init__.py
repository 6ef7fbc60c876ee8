"""Building blocks shared by the models of both families (each exactly once): spectral analysis and Griffin-Lim
(``spectral``), nearest-codeword search and residual VQ (``quantization``), rotary position embeddings (``rotary``),
the SoundStorm conformer (``conformer``), AnyGPT's flattening of multi-level music codes (``music_tokens``) and the
checks of what an acoustic model is handed (``acoustic_inputs``)."""
