"""The AT/DT networks: shapes, torchvision key layout, ImageNet loading, Eq. 4, losses that fall."""

import pytest
import torch
from torch import nn

from atdt_train.lit import depth_loss, semantic_loss
from atdt_train.models import Decoder, Encoder, TaskNet, TransferNet, transfer


@pytest.mark.parametrize("depth,channels", [(18, (64, 128, 256, 512)), (50, (256, 512, 1024, 2048))])
def test_encoder_levels_channels_and_output_stride(depth, channels):
    x = torch.randn(1, 3, 64, 96)
    for level, strides in zip((1, 2, 3, 4), (4, 8, 16, 16)):
        e = Encoder(depth, "batch", level).eval()
        with torch.no_grad():
            f = e(x)
        assert e.out_channels == channels[level - 1]
        assert f.shape == (1, channels[level - 1], 64 // strides, 96 // strides)
        assert not hasattr(e, f"layer{level + 1}")


def test_encoder_keys_are_torchvision_resnet_keys():
    keys = set(Encoder(50, "batch", 4).state_dict())
    # a sample of torchvision resnet50's keys (fc excluded)
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.conv3.weight", "layer1.0.downsample.0.weight",
              "layer1.0.downsample.1.running_mean", "layer3.5.bn2.weight", "layer4.2.conv3.weight",
              "layer4.0.downsample.0.weight"):
        assert k in keys
    r18 = Encoder(18, "batch", 4).state_dict()
    assert "layer1.0.downsample.0.weight" not in r18 and "layer2.0.downsample.0.weight" in r18
    assert r18["layer4.1.conv1.weight"].shape == (512, 512, 3, 3)


def test_load_imagenet_ignores_fc_and_absent_stages(tmp_path):
    full = Encoder(18, "batch", 4)
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in full.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    net = TaskNet("semantic", 18, "batch", feature_level=2)
    loaded = net.load_imagenet(path)
    assert "conv1.weight" in loaded and "decoder.layer4.1.conv2.weight" in loaded
    assert not any(k.startswith("fc") for k in loaded)
    assert torch.all(net.encoder.layer2[0].conv1.weight == 0.5)
    assert torch.all(net.decoder.layer3[0].conv1.weight == 0.5)
    with pytest.raises(ValueError, match="layer1.0.conv1.weight"):
        Encoder(50).load_imagenet(path)  # a ResNet-18 checkpoint does not fit ResNet-50
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        Encoder(18).load_imagenet(tmp_path / "nowhere.pth")


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_eq4_chain_shapes_and_classes(level):
    """D2(G(E1(x))) keeps the input size and gives 11 class scores (Dep->Sem) or 1 depth map."""
    x = torch.randn(2, 3, 40, 72)  # not a multiple of 16: every stage must still fit
    n1, n2 = TaskNet("depth", 18, "batch", level).eval(), TaskNet("semantic", 18, "batch", level).eval()
    g = TransferNet(n1.encoder.out_channels, "batch", hidden=32).eval()
    with torch.no_grad():
        f1 = n1.encoder(x)
        assert g(f1).shape == n2.encoder(x).shape
        sem = transfer(n1.encoder, g, n2.decoder, x)
        dep = transfer(n2.encoder, g, n1.decoder, x)
    assert sem.shape == (2, 11, 40, 72) and dep.shape == (2, 1, 40, 72)
    # with E2 in E1's place and G the identity, Eq. 4 is N2 itself: D2(E2(x)) = N2(x), to the bit
    with torch.no_grad():
        torch.testing.assert_close(transfer(n2.encoder, torch.nn.Identity(), n2.decoder, x), n2(x), rtol=0, atol=0)
        assert not torch.allclose(transfer(n2.encoder, g, n2.decoder, x), n2(x))  # ... and G is applied


def test_transfer_net_odd_sizes_and_norms():
    for norm in ("batch", "group", "none"):
        g = TransferNet(64, norm, hidden=32)
        for h, w in ((5, 7), (8, 16), (3, 3)):
            assert g(torch.randn(2, 64, h, w)).shape == (2, 64, h, w)
    assert TransferNet(64, out_channels=128, hidden=16)(torch.randn(1, 64, 6, 6)).shape == (1, 128, 6, 6)


@pytest.mark.parametrize("down", [0, 1, 2])
def test_transfer_down_sets_the_bottleneck_resolution(down):
    """G's hourglass: with ``down`` halvings its bottleneck is the input grid / 2**down (the
    paper's G maps 16x16 features through 4x4 cells), and the output is back on the input grid."""
    torch.manual_seed(0)
    g = TransferNet(8, "batch", hidden=16, down=down).eval()
    assert g.down_steps == down
    seen = {}
    g.down.register_forward_hook(lambda m, i, out: seen.update(bottleneck=tuple(out.shape)))
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        assert g(x).shape == x.shape
    assert seen["bottleneck"] == (1, 16, 16 >> down, 16 >> down)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in g.modules()) == down
    with pytest.raises(ValueError, match="transfer_down=3 is not supported; accepted: 0, 1, 2"):
        TransferNet(8, down=3)


def test_transfer_down_2_is_the_paper_g_with_its_parameter_names():
    """The default G is unchanged (weights stored before ``down`` existed still load); down 0
    and 1 keep the same layer names with stride-1 convolutions in place of the halvings."""
    paper = TransferNet(64, hidden=32)
    assert [type(m).__name__ for m in paper.up.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))] \
        == ["ConvTranspose2d", "ConvTranspose2d"]
    assert paper.down[1][0].stride == (2, 2) and paper.down[2][0].stride == (2, 2)
    flat = TransferNet(64, hidden=32, down=0)
    assert flat.state_dict().keys() == paper.state_dict().keys()
    assert flat.down[1][0].stride == (1, 1) and flat.down[1][0].dilation == (2, 2)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_each_norm_choice_normalises_as_named(norm):
    """Sec. 6.3's ablation, by behaviour (training mode): batch and group norm make N blind to the
    input's scale, only batch norm makes a frame's output depend on the rest of its batch, and
    without normalisation N (ReLUs, biases initialised to 0) is positively homogeneous."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 48)
    net = TaskNet("semantic", 18, norm).train()
    with torch.no_grad():
        y, scaled, alone = net(x), net(3.0 * x), net(x[:1])
    rel = ((scaled - y).norm() / y.norm()).item()
    if norm == "none":
        torch.testing.assert_close(scaled, 3.0 * y, rtol=1e-4, atol=1e-4)
    else:
        assert rel < 2e-3, rel  # measured 4e-5 (group), 2e-4 (batch): the norms' eps
    if norm == "batch":
        assert (alone - y[:1]).abs().max() > 0.1  # normalised by another batch's statistics
    else:
        torch.testing.assert_close(alone, y[:1], rtol=1e-4, atol=1e-4)


def test_decoder_widths_set_the_scale_of_the_last_layer():
    from atdt_train.models import DECODER_WIDTHS, FULL_RESOLUTION_WIDTHS

    f = torch.randn(1, 512, 4, 6)  # ResNet-18 features of a 64x96 input
    grids = {}
    for widths, last_scale in ((DECODER_WIDTHS, 2), (FULL_RESOLUTION_WIDTHS, 1), ((16,), 16)):
        d = Decoder("semantic", 4, 18, "batch", widths).eval()
        d.head.register_forward_hook(lambda m, i, o, w=widths: grids.__setitem__(w, tuple(o.shape[-2:])))
        with torch.no_grad():
            assert d(f, (64, 96)).shape == (1, 11, 64, 96)  # always full resolution out
        assert grids[widths] == (64 // last_scale, 96 // last_scale)
        assert [b.conv.out_channels for b in [d.project, *d.up]] == list(widths)
    # the default decoder costs a fraction of the full-resolution one (FLOPs at the head scale)
    n_default = sum(p.numel() for p in Decoder("depth").parameters())
    n_full = sum(p.numel() for p in Decoder("depth", widths=FULL_RESOLUTION_WIDTHS).parameters())
    assert n_default < n_full / 2
    with pytest.raises(ValueError, match="1 to 5 positive integers"):
        Decoder("depth", widths=(64, 32, 16, 8, 8, 8))


def test_bad_choices_name_the_setting():
    with pytest.raises(ValueError, match="depth=101"):
        Encoder(101)
    with pytest.raises(ValueError, match="norm='layer'"):
        Encoder(18, "layer")
    with pytest.raises(ValueError, match="task='flow'"):
        Decoder("flow")
    with pytest.raises(ValueError, match="feature_level=5"):
        TaskNet("depth", 18, "batch", 5)


def _frames(n=4, h=32, w=64):
    """A handful of frames whose labels follow the image (left half / right half)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, h, w, generator=gen) * 0.1
    x[:, 0, :, : w // 2] += 1.0
    sem = torch.zeros(n, h, w, dtype=torch.long)
    sem[:, :, w // 2:] = 7
    sem[:, : h // 4] = 255
    depth = torch.linspace(2.0, 30.0, h).view(1, h, 1).expand(n, h, w).clone()
    valid = depth > 0
    valid[:, :, :4] = False
    return x, sem, depth, valid, torch.full((n,), 50.0)


def _overfit(module, loss_fn, steps=25, lr=1e-3):
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_overfitting_drives_each_loss_down():
    torch.manual_seed(0)
    x, sem, depth, valid, _ = _frames(n=2)
    n_sem, n_dep = TaskNet("semantic", 18), TaskNet("depth", 18)
    sem_losses = _overfit(n_sem, lambda: semantic_loss(n_sem(x), sem))
    assert sem_losses[-1] < 0.3 * sem_losses[0]
    dep_losses = _overfit(n_dep, lambda: depth_loss(n_dep(x), depth, valid, None), lr=3e-3)
    assert dep_losses[-1] < 0.3 * dep_losses[0]
    # Eq. 3: G learns to map the (fixed) E1 features to the (fixed) E2 features
    n_sem.eval(), n_dep.eval()
    with torch.no_grad():
        f1, f2 = n_dep.encoder(x), n_sem.encoder(x)
    g = TransferNet(f1.shape[1], hidden=64)
    g_losses = _overfit(g, lambda: torch.nn.functional.mse_loss(g(f1), f2))
    assert g_losses[-1] < 0.5 * g_losses[0]


def test_losses_ignore_unlabelled_pixels():
    logits = torch.zeros(1, 11, 2, 2, requires_grad=True)
    assert float(semantic_loss(logits, torch.full((1, 2, 2), 255))) == 0.0  # no NaN without labels
    pred = torch.full((1, 1, 2, 2), 3.0)
    depth = torch.tensor([[[1.0, 2.0], [0.0, 10.0]]])
    valid = depth > 0
    assert float(depth_loss(pred, depth, valid, None)) == pytest.approx((2 + 1 + 7) / 3)
    # focal-normalised units: target' = depth / scale, scale = f_frame / f_ref = 2 / 4
    assert float(depth_loss(pred, depth, valid, torch.tensor([0.5]))) == pytest.approx((1 + 1 + 17) / 3)


def test_reports_name_a_g_built_beyond_the_paper():
    """A G with fewer halvings is not the paper's method: its rows are labelled AT/DT+ and the
    report says how G was built; the paper's G keeps the plain AT/DT label."""
    from atdt_train.report import method_labels, transfer_name

    assert transfer_name({"model": {"transfer_down": 2}}) == "Eq. 3 (paper)"
    assert method_labels({"model": {"transfer_down": 2}})["atdt"] == "AT/DT"
    assert transfer_name({"model": {"transfer_down": 0}}) == "Eq. 3, G with 0 halvings (paper: 2)"
    assert method_labels({"model": {"transfer_down": 0}})["atdt_st"] == "AT/DT++ST"
    assert transfer_name({"model": {"transfer_down": 1}, "transfer": {"task_loss": 0.5}}) \
        == "Eq. 3 + 0.5 x task loss through D2, G with 1 halving (paper: 2)"
