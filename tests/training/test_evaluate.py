from training.evaluate import TurnRecord, format_table, summarise, targets_met


def record(family, text_ok, speech_ok, ceiling_ok=True, wer=None, image_ok=None, music_ok=None, wall=1.0, audio=4.0):
    return TurnRecord(
        family=family,
        spoken=wer is not None,
        question="q",
        reference="r",
        text_correct=text_ok,
        transcript_wer=wer,
        speech_correct=speech_ok,
        ceiling_correct=ceiling_ok,
        image_correct=image_ok,
        music_correct=music_ok,
        wall_seconds=wall,
        audio_seconds=audio,
    )


def test_summary_rates_and_ratio_to_the_ceiling():
    rows = [
        record("arithmetic", True, True, wer=0.0),
        record("arithmetic", False, False, ceiling_ok=False, wer=0.5),
        record("draw", True, True, image_ok=True),
        record("draw", True, False, image_ok=False, music_ok=True, wall=3.0, audio=2.0),
    ]
    summary = summarise(rows)
    overall = summary["overall"]
    assert overall["turns"] == 4
    assert overall["text_accuracy"] == 0.75
    assert overall["transcript_wer"] == 0.25  # mean over spoken turns only
    assert overall["speech_accuracy"] == 0.5 and overall["speech_ceiling"] == 0.75
    assert overall["speech_vs_ceiling"] == round(0.5 / 0.75, 4)
    assert overall["image_accuracy"] == 0.5 and overall["music_accuracy"] == 1.0
    assert overall["rtf"] == round(6.0 / 14.0, 4)  # total wall time over total audio
    assert summary["families"]["draw"]["transcript_wer"] is None
    met = targets_met(overall)
    assert met["text_accuracy"] is False and met["music_accuracy"] is True and met["rtf"] is True
    assert met["level1_same_sentence"] is None  # no codec report
    codec = {"all_voices": {"same_sentence": 0.3, "different_sentences": 0.75}}
    met = targets_met(overall, codec)
    assert met["level1_same_sentence"] is True and met["level1_different_sentences"] is False
    table = format_table(summary)
    assert table.splitlines()[0].split()[0] == "family" and table.splitlines()[-1].startswith("ALL")


def test_no_audio_means_no_real_time_factor():
    summary = summarise([record("facts", True, False, audio=0.0)])
    assert summary["overall"]["rtf"] is None
    assert targets_met(summary["overall"])["rtf"] is None
