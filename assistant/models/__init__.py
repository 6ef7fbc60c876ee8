"""The models, one interface per role and one subpackage per family (torch-free to import; the models load torch).

    interfaces.py   SpeechCodec, AcousticModel, ImageCodec, MusicCodec, CausalLM: what the rest of the system reads
    bundle.py       ModelBundle: the models of one family, typed by those interfaces
    loading.py      ModelSpec and load_models(spec, parts): the one entry point (roles, backends, CLI, Ray shims)
    config_io.py    the one JSON / config reader and its one error type, ConfigError
    checkpoint.py   our one checkpoint format (<name>.json + <name>.safetensors) and the strict state-dict check
    voices.py       VoiceBank: the acoustic prompts replies can be spoken in
    embedded/       the tiny CPU family trained here (assistant/assets/embedded/)
    anygpt/         the published AnyGPT checkpoints, read from a weights root laid out as on the hub

Building blocks both families use are in :mod:`assistant.modules`; fitting the embedded codecs is in ``training/``.
"""
