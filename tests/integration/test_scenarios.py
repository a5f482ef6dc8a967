import time

import numpy as np
import pytest

from mmfed.data.manifest import load_manifest
from mmfed.data.scenarios import from_site_dirs, prepare_scenario
from mmfed.data.scenarios.fsdd_mnist import load_mnist
from mmfed.data.scenarios.synthetic import synthetic_site
from mmfed.errors import ConfigError, DataError


def test_fsdd_mnist_six_speaker_sites_with_official_split(fsdd_sites):
    assert [s.name for s in fsdd_sites.sites] == [
        "site_george",
        "site_jackson",
        "site_lucas",
        "site_nicolas",
        "site_theo",
        "site_yweweler",
    ]
    for manifest in fsdd_sites.load_sites():
        assert len(manifest.samples) == 500
        test = manifest.split("test")
        assert len(test) == 50 and all(int(s.id.rsplit("_", 1)[1]) < 5 for s in test)
        assert all(int(s.id.rsplit("_", 1)[1]) >= 5 for s in manifest.split("train"))


def test_fsdd_mnist_images_distinct_same_digit_and_split_matched(fsdd_sites, shared_data):
    mnist = load_mnist(shared_data)
    used = set()
    for manifest in fsdd_sites.load_sites():
        for s in manifest.samples:
            key = (s.extra["mnist_split"], int(s.extra["mnist_index"]))
            assert key not in used
            used.add(key)
            assert key[0] == s.split  # train audio with MNIST train images, test with test
            assert mnist[key[0]][1][key[1]] == s.label == int(s.id[0])
    assert len(used) == 3000


@pytest.mark.slow  # several seconds: in `make test` (CI), not test-fast
def test_fsdd_mnist_pairing_is_seeded(shared_data, tmp_path):
    a = prepare_scenario("fsdd-mnist", data_dir=shared_data, cache_dir=tmp_path, seed=1)
    b = prepare_scenario("fsdd-mnist", data_dir=shared_data, cache_dir=tmp_path, seed=2)
    pick = lambda sc: [s.extra["mnist_index"] for s in load_manifest(sc.sites[0]).samples]  # noqa: E731
    assert pick(a) != pick(b)
    t0 = time.perf_counter()
    again = prepare_scenario("fsdd-mnist", data_dir=shared_data, cache_dir=tmp_path, seed=1)
    assert time.perf_counter() - t0 < 1.0 and pick(again) == pick(a)


def test_fsdd_mnist_wrong_data_dir_is_clear(tmp_path):
    with pytest.raises(DataError, match="fsdd/recordings"):
        prepare_scenario("fsdd-mnist", data_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="--data-dir"):
        prepare_scenario("fsdd-mnist", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="digits-av"):
        prepare_scenario("cifar", cache_dir=tmp_path)


def test_synthetic_sites_are_lazy_deterministic_and_learnable_shaped(tmp_path):
    sc = prepare_scenario("synthetic", cache_dir=tmp_path, num_sites=1000, samples_per_site=10)
    assert len(sc.sites) == 1000 and sc.modalities == ("image", "audio", "text")
    assert not any(p.exists() for p in sc.sites)  # nothing written until a site is used
    m = load_manifest(sc.site(1))
    assert len(m.samples) == 10 and {s.split for s in m.samples} == {"train", "test"}
    root = sc.sites[0].parent
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == ["site_00001"]
    again = synthetic_site(tmp_path / "scenarios" / "synthetic", 1, 10, 10, ("image", "audio", "text"), 0)
    assert again == sc.sites[1]
    other = synthetic_site(tmp_path / "other", 1, 10, 10, ("image", "audio", "text"), 0)
    assert [s.text for s in load_manifest(other).samples] == [s.text for s in m.samples]
    assert (np.asarray(__import__("PIL.Image").Image.open(m.samples[0].image)).std()) > 10


def test_synthetic_video_site(tmp_path):
    site = synthetic_site(tmp_path, 0, samples=3, modalities="video,audio")
    m = load_manifest(site)  # validation decodes the video header
    assert all(s.video is not None and s.image is None for s in m.samples)


def test_user_site_dirs_share_labels(tmp_path, fsdd_sites):
    sc = from_site_dirs(fsdd_sites.sites[:2])
    assert sc.labels == [str(d) for d in range(10)] and sc.modalities == ("image", "audio")
    (tmp_path / "manifest.csv").write_text("id,label,split,text\n1,a,train,x\n")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(ConfigError, match="labels.txt differs"):
        from_site_dirs([fsdd_sites.sites[0], tmp_path])
