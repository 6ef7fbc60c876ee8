"""The AnyGPT model family: the published checkpoints, read strictly from a weights root laid out as the hub
repositories are (torch-free to import; the models are in the modules below).

    speech.py    SpeechTokenizer      SEANet + BiLSTM, 8 x 1024 RVQ (fnlp/AnyGPT-speech-modules)
    acoustic.py  SoundStorm           12-layer conformer filling levels 2..8 (same repository); the embedded family
                                      builds the same class at a small size
    image.py     SeedImageCodec       SEED tokenizer + SD-2.1-unCLIP renderer (AILab-CVC/seed-tokenizer-2)
    music.py     EncodecMusic         transformers' EncodecModel (facebook/encodec_32khz)
    lm.py        the LLaMA folder     fnlp/AnyGPT-chat | -base, its vocabulary and generation settings
    loader.py    the weights root's layout, the family's loader (``assistant.models.loading.load_models`` calls it)
                 and the folder check behind ``anystream check-weights``
"""
