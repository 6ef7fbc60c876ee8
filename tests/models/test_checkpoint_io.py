"""Strict state-dict checks shared by every loader: errors name the file, the key and both shapes; nothing
half-loads."""

import pytest
import torch
from torch import nn

from assistant.models.checkpoint_io import CheckpointError, load_state_dict_strict, read_torch_state_dict


def small() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))


def test_a_matching_state_dict_loads_and_casts_to_the_module_dtype(tmp_path):
    source = small()
    path = tmp_path / "ckpt.dev"
    torch.save({k: v.double() for k, v in source.state_dict().items()}, path)
    target = small()
    load_state_dict_strict(target, read_torch_state_dict(path), path)
    assert all(
        torch.equal(a.float(), b)
        for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    )
    assert target[0].weight.dtype == torch.float32


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("1.bias"), "missing key '1.bias'"),
        (lambda s: s.__setitem__("2.weight", torch.zeros(4)), "unexpected key '2.weight'"),
        (
            lambda s: s.__setitem__("0.weight", torch.zeros(4, 5)),
            r"key '0.weight' has shape \(4, 5\), expected \(4, 3\)",
        ),
    ],
)
def test_a_bad_state_dict_names_file_and_key_and_leaves_the_module_untouched(tmp_path, edit, message):
    state = {k: torch.full_like(v, 7.0) for k, v in small().state_dict().items()}
    edit(state)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    target = small()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"{path.name}.*{message}"):
        load_state_dict_strict(target, read_torch_state_dict(path), path)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_unreadable_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_torch_state_dict(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable torch state dict"):
        read_torch_state_dict(garbage)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match="expected a mapping"):
        read_torch_state_dict(listed)
