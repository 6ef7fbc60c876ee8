import pytest

from assistant.prompts import (
    AssistantMessage,
    BasePromptBuilder,
    ChatPromptBuilder,
    Conversation,
    UserMessage,
    is_well_formed_segment,
)
from assistant.vocab import Modality

SYSTEM = (
    "You are an AI assistant named MMGPT who can understand and generate multimodal content, "
    "including text, speech, images and audio.\n"
)


@pytest.fixture
def vocab(make_tiny_vocab):
    return make_tiny_vocab(16)


def render(vocab, ids):
    assert ids[0] == vocab.bos_id
    return vocab.render(ids[1:])


def sp(*codes):
    return "<sosp>" + "".join(f"<\U0001f5e3\ufe0f{c}>" for c in codes) + "<eosp>"


def test_single_turn_text(vocab):
    ids = ChatPromptBuilder(vocab).build(Conversation(), UserMessage(text="Hi there"))
    assert render(vocab, ids) == SYSTEM + "[Human]: Hi there<eoh>\n[MMGPT]:"
    assert ids.count(vocab.human_id) == 1 and ids.count(vocab.mmgpt_id) == 1  # markers are single ids


def test_speech_instruction_and_force(vocab):
    msg = UserMessage(speech_codes=[3, 3, 7])
    ids = ChatPromptBuilder(vocab).build(None, msg, force_modality=Modality.SPEECH)
    expected = (
        SYSTEM + "[Human]: " + sp(3, 3, 7) + " Please recognize the voice command and give reply and voice<eoh>\n"
        "[MMGPT]: <sosp>"
    )
    assert render(vocab, ids) == expected
    assert ids[-1] == vocab.range_of(Modality.SPEECH).start_id


def test_interleaved_order(vocab):
    msg = UserMessage(text="what is this?", speech_codes=[1], image_codes=[2, 4], music_codes=[5])
    ids = ChatPromptBuilder(vocab).build(None, msg)
    body = "<soim><\U0001f4402><\U0001f4404><eoim> <somu><\U0001f3b65><eomu> " + sp(1)
    body += " Please recognize the voice command and give reply and voice what is this?"
    assert render(vocab, ids) == SYSTEM + "[Human]: " + body + "<eoh>\n[MMGPT]:"


def test_multi_turn_history_and_forced_image(vocab):
    conv = Conversation()
    reply = AssistantMessage.from_generated(vocab, [*vocab.encode_text(" Hello!"), vocab.eos_id, vocab.text_eos_id])
    assert vocab.render(reply.token_ids) == "Hello!"
    conv.append_turn(UserMessage(text="Hi"), reply)
    ids = ChatPromptBuilder(vocab).build(conv, UserMessage(text="Draw a cat"), force_modality=Modality.IMAGE)
    assert render(vocab, ids) == (
        SYSTEM + "[Human]: Hi<eoh>\n[MMGPT]: Hello!<eos>\n[Human]: Draw a cat<eoh>\n[MMGPT]: <soim>"
    )


def test_speech_reply_history(vocab):
    rng = vocab.range_of(Modality.SPEECH)
    gen = [
        vocab.ins_id,
        *vocab.encode_text(" hi\n "),
        vocab.res_id,
        *vocab.encode_text(" hello "),
        rng.start_id,
        *vocab.codes_to_ids(Modality.SPEECH, [9, 9]),
        rng.end_id,
        vocab.eos_id,
    ]
    reply = AssistantMessage.from_generated(vocab, gen)
    assert vocab.render(reply.token_ids) == "<-Ins-> hi\n <-Res-> hello " + sp(9, 9)


def test_truncate_drops_oldest(vocab):
    builder = ChatPromptBuilder(vocab)
    conv = Conversation()
    for k in range(5):
        conv.append_turn(UserMessage(text=f"question {k}"), AssistantMessage(vocab.encode_text(f"answer {k}")))
    pending = UserMessage(text="last")
    full = builder.prompt_length(conv, pending)
    one_turn = builder.prompt_length(Conversation(conv.turns[-1:]), pending)
    dropped = conv.truncate_to(one_turn, builder, pending)
    assert dropped == 4 and len(conv.turns) == 1
    assert vocab.render(conv.turns[0].assistant.token_ids) == "answer 4"
    assert builder.prompt_length(conv, pending) <= one_turn < full
    with pytest.raises(ValueError):
        conv.truncate_to(5, builder, pending)


def test_base_templates(vocab):
    base = BasePromptBuilder(vocab)
    ids = base.text_to_x(Modality.SPEECH, "Good morning.")
    assert render(vocab, ids) == (
        "[Human]: Would you kindly read this text out loud so that I can hear it? "
        "This is input: Good morning.<eoh> [MMGPT]:"
    )
    ids = base.x_to_text(Modality.SPEECH, [4, 5])
    assert render(vocab, ids) == (
        "[Human]: Analyze the spoken words and transcribe them accurately. " + sp(4, 5) + "<eoh> [MMGPT]:"
    )
    ids = base.x_to_text(Modality.IMAGE, [1])
    assert render(vocab, ids).startswith("[Human]: Describe the scene in this picture. <soim>")


def test_empty_message_rejected_and_segment_check(vocab):
    with pytest.raises(ValueError):
        UserMessage()
    seg = vocab.segment_ids(Modality.MUSIC, [0, 1])
    assert is_well_formed_segment(vocab, seg, Modality.MUSIC)
    assert not is_well_formed_segment(vocab, seg, Modality.SPEECH)
