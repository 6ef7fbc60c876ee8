import json
import random

import pytest

from assistant.vocab import (
    ADDED_TOKENS_FILE,
    ByteTextTokenizer,
    Modality,
    ModalityRange,
    TextDetokenizer,
    TokenKind,
    UnifiedVocab,
    code_token_string,
    write_embedded_vocab_files,
)


# The vocabulary files themselves are under test here (their layout, rewritten copies, what survives a round trip), so
# these tests write their own instead of using the shared ``tiny_vocab``: distinct sizes per modality, a fresh folder.
@pytest.fixture
def small_dir(tmp_path):
    return write_embedded_vocab_files(tmp_path / "tok", image_codes=16, speech_codes=8, music_codes=12)


@pytest.fixture
def vocab(small_dir):
    return UnifiedVocab.from_dir(small_dir)


def test_layout_follows_anygpt_order(vocab):
    t = vocab.text_size
    assert t == 259
    assert (vocab.human_id, vocab.mmgpt_id, vocab.eoh_id, vocab.eos_id) == (t, t + 1, t + 2, t + 3)
    img, sp, mu = (vocab.ranges[m] for m in (Modality.IMAGE, Modality.SPEECH, Modality.MUSIC))
    assert (
        img.first_id == t + 4
        and img.n_codes == 16
        and img.start_id == img.last_id + 1
        and img.end_id == img.start_id + 1
    )
    assert sp.first_id == img.end_id + 1 and sp.n_codes == 8
    assert mu.first_id == sp.end_id + 1 and mu.n_codes == 12
    assert vocab.ins_id == mu.end_id + 1 and vocab.res_id == mu.end_id + 2
    assert vocab.size == vocab.res_id + 1
    assert vocab.stop_ids == {vocab.eos_id, vocab.text_eos_id}
    assert vocab.text_eos_id == 2 and vocab.bos_id == 1


def test_ranges_round_trip(vocab):
    for m, rng in vocab.ranges.items():
        codes = list(range(rng.n_codes))
        ids = vocab.codes_to_ids(m, codes)
        assert vocab.ids_to_codes(m, ids) == codes
        for code, i in zip(codes, ids, strict=True):
            info = vocab.classify(i)
            assert (info.kind, info.modality, info.code) == (TokenKind.CODE, m, code)
            assert vocab.token_string(i) == code_token_string(m, code)
        assert vocab.classify(rng.start_id).kind is TokenKind.START
        assert vocab.classify(rng.end_id) == vocab.classify(rng.end_id) and vocab.classify(rng.end_id).modality is m


def test_ids_to_codes_rejects_other_modality(vocab):
    speech_id = vocab.codes_to_ids(Modality.SPEECH, [0])[0]
    with pytest.raises(ValueError):
        vocab.ids_to_codes(Modality.IMAGE, [speech_id])
    with pytest.raises(ValueError):
        vocab.codes_to_ids(Modality.SPEECH, [8])
    with pytest.raises(ValueError):
        vocab.ids_to_codes(Modality.SPEECH, [vocab.range_of(Modality.SPEECH).end_id])


def test_invalid_ids(vocab):
    for bad in (-1, vocab.size, vocab.size + 100):
        assert vocab.classify(bad).kind is TokenKind.INVALID
        with pytest.raises(ValueError):
            vocab.check_id(bad)
        with pytest.raises(ValueError):
            vocab.render([bad])
    with pytest.raises(ValueError):
        vocab.decode_text([vocab.human_id])


def test_kinds(vocab):
    assert vocab.classify(vocab.human_id).kind is TokenKind.MARKER
    assert vocab.classify(vocab.ins_id).kind is TokenKind.MARKER
    assert vocab.classify(vocab.eos_id).kind is TokenKind.STOP
    assert vocab.classify(vocab.text_eos_id).kind is TokenKind.STOP
    assert vocab.classify(vocab.encode_text("a")[0]).kind is TokenKind.TEXT


def _rewrite(small_dir, transform):
    path = small_dir / ADDED_TOKENS_FILE
    added = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(transform(added), ensure_ascii=False), encoding="utf-8")
    return UnifiedVocab.from_dir(small_dir)


def test_ids_are_derived_from_file_shifted(small_dir, vocab):
    shifted = _rewrite(small_dir, lambda a: {k: v + 1000 for k, v in a.items()})
    assert shifted.human_id == vocab.human_id + 1000
    assert shifted.size == vocab.size + 1000
    for m in vocab.ranges:
        assert shifted.ranges[m].first_id == vocab.ranges[m].first_id + 1000
    # the gap between text and added tokens is unassigned
    assert shifted.classify(vocab.text_size + 5).kind is TokenKind.INVALID


def test_ids_are_derived_from_file_shuffled_blocks(small_dir, vocab):
    # Re-lay the file: music block first, then markers, then speech, then image; markers in reverse order.
    def relayout(added):
        t = vocab.text_size
        order = [k for k in added if "\U0001f3b6" in k or k in ("<somu>", "<eomu>")]
        order += ["<-Res->", "<-Ins->", "<eos>", "<eoh>", "[MMGPT]", "[Human]"]
        order += [k for k in added if "\U0001f5e3" in k or k in ("<sosp>", "<eosp>")]
        order += [k for k in added if "\U0001f440" in k or k in ("<soim>", "<eoim>")]
        assert sorted(order) == sorted(added)
        items = list(order)
        random.Random(0).shuffle(items)  # json key order must not matter either
        ids = {k: t + order.index(k) for k in order}
        return {k: ids[k] for k in items}

    v2 = _rewrite(small_dir, relayout)
    assert v2.ranges[Modality.MUSIC].first_id == v2.text_size
    assert v2.human_id != vocab.human_id and v2.eos_id != vocab.eos_id
    assert v2.ranges[Modality.IMAGE].first_id > v2.ranges[Modality.SPEECH].first_id
    assert v2.ids_to_codes(Modality.SPEECH, v2.codes_to_ids(Modality.SPEECH, [3, 7])) == [3, 7]
    assert v2.classify(v2.ranges[Modality.MUSIC].first_id).modality is Modality.MUSIC


def test_non_contiguous_codes_rejected(small_dir):
    def break_it(added):
        a, b = code_token_string(Modality.SPEECH, 2), code_token_string(Modality.SPEECH, 5)
        added[a], added[b] = added[b], added[a]
        return added

    with pytest.raises(ValueError, match="contiguous"):
        _rewrite(small_dir, break_it)


def test_missing_marker_and_collision_rejected(small_dir):
    with pytest.raises(ValueError, match="<eoh>"):
        _rewrite(small_dir, lambda a: {k: v for k, v in a.items() if k != "<eoh>"})
    with pytest.raises(ValueError, match="text vocabulary"):
        _rewrite(small_dir, lambda a: {**a, "[Human]": 5})


def test_optional_ins_res(tmp_path):
    v = UnifiedVocab.from_dir(write_embedded_vocab_files(tmp_path, 4, 4, 4, with_ins_res=False))
    assert v.ins_id is None and v.res_id is None


def test_committed_embedded_vocab_has_full_code_ranges():
    v = UnifiedVocab.embedded()
    assert all(r.n_codes == 1024 for r in v.ranges.values())
    assert v.ranges[Modality.IMAGE].first_id == v.text_size + 4  # [Human] [MMGPT] <eoh> <eos> come first


PIECES = ["hello", " hello", " world", "Hello there, friend.\n"]


@pytest.mark.parametrize(
    "text",
    ["hello world", "Hello there, friend.\n hello", "helloworld", "xhello", "hello1", "héllo wörld ✓", "", " "],
)
def test_pieces_round_trip(text):
    tok = ByteTextTokenizer(pieces=PIECES)
    assert tok.decode(tok.encode(text)) == text


def test_pieces_match_whole_words_only():
    tok = ByteTextTokenizer(pieces=PIECES)
    first_piece = tok.piece_offset
    assert tok.encode("hello world") == [first_piece, first_piece + 2]
    assert tok.encode("Hello there, friend.\n") == [first_piece + 3]  # the longest piece wins
    # Inside a longer word a piece does not match: the word stays bytes.
    assert all(i < first_piece for i in tok.encode("helloworld"))
    assert all(i < first_piece for i in tok.encode("xhello"))
    assert tok.vocab_size == 3 + 256 + len(PIECES)


def test_pieces_are_checked():
    with pytest.raises(ValueError, match="duplicate pieces"):
        ByteTextTokenizer(pieces=["ab", "ab"])
    with pytest.raises(ValueError, match="at least 2 characters"):
        ByteTextTokenizer(pieces=["a"])


def test_pieces_survive_the_file_and_streaming_decode(tmp_path):
    vocab = UnifiedVocab.from_dir(write_embedded_vocab_files(tmp_path, 4, 4, 4, pieces=PIECES))
    assert vocab.text_size == 3 + 256 + len(PIECES)
    assert vocab.human_id == vocab.text_size  # the added tokens follow the pieces
    text = "hello wörld hello"
    detok = TextDetokenizer(vocab)
    streamed = "".join(detok.push(i) for i in vocab.encode_text(text)) + detok.flush()
    assert streamed == text


def test_text_round_trip_and_render(vocab):
    text = "héllo, wörld ✓ 🎶"
    ids = vocab.encode_text(text)
    assert vocab.decode_text(ids) == text
    rendered = vocab.render([vocab.human_id, *ids, *vocab.segment_ids(Modality.SPEECH, [1, 2]), vocab.eos_id])
    assert rendered == "[Human]" + text + "<sosp><🗣️1><🗣️2><eosp><eos>"


def test_streaming_detokenizer_multibyte(vocab):
    text = "añ€😀z"
    detok = TextDetokenizer(vocab)
    deltas = [detok.push(i) for i in vocab.encode_text(text)]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    # the 4-byte emoji is only emitted once complete
    emoji_bytes = len("😀".encode())
    start = len("añ€".encode())
    assert deltas[start : start + emoji_bytes - 1] == [""] * (emoji_bytes - 1)
    assert deltas[start + emoji_bytes - 1] == "😀"
    assert detok.flush() == ""
    with pytest.raises(ValueError):
        detok.push(vocab.human_id)


def test_detokenizer_flush_incomplete(vocab):
    detok = TextDetokenizer(vocab)
    first = "€".encode()[0] + ByteTextTokenizer().byte_offset
    assert detok.push(first) == ""
    assert detok.flush() == "\ufffd"


def test_modality_range_checks():
    r = ModalityRange(Modality.SPEECH, 10, 4, 14, 15)
    assert r.contains(13) and not r.contains(14)
    with pytest.raises(ValueError):
        ModalityRange(Modality.SPEECH, 10, 0, 14, 15)
