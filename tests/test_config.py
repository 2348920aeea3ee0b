"""~/.konduktor/config.yaml: Konduktor keys, our sync section, did-you-mean, the store rule."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from konduktor import config
from konduktor.errors import ConfigError


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KONDUKTOR_HOME", str(tmp_path / "khome"))
    monkeypatch.delenv("KONDUKTOR_CONFIG", raising=False)
    return tmp_path / "khome"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_no_file_means_the_local_store(home: Path) -> None:
    cfg = config.load()
    assert cfg.path is None
    url, options = cfg.store_url()
    assert url == f"file://{home / 'store'}"
    assert not options.create_bucket


def test_konduktor_keys_and_sync_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "allowed_clouds: [s3]\n"
        "jobs:\n  bucket: s3://team-bucket/code\n"
        "kubernetes:\n  pod_config: {}\n"  # Konduktor's own keys are left alone
        "sync:\n  compression_level: 5\n  soft_limit_mb: 10\n  hard_limit_mb: 20\n"
        "  presign_seconds: 600\n"
        "  store:\n    endpoint_url: http://127.0.0.1:9000\n    region: eu-west-1\n"
        "    retry_mode: adaptive\n    max_attempts: 3\n",
    )
    cfg = config.load(path)
    assert cfg.compression_level == 5
    assert (cfg.soft_limit_mb, cfg.hard_limit_mb, cfg.presign_seconds) == (10, 20, 600)
    url, options = cfg.store_url()
    assert url == "s3://team-bucket/code"
    assert options.endpoint_url == "http://127.0.0.1:9000"
    assert (options.region, options.retry_mode, options.max_attempts) == (
        "eu-west-1",
        "adaptive",
        3,
    )


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "jobs:\n  bucket: gs://elsewhere\n")
    monkeypatch.setenv("KONDUKTOR_CONFIG", str(path))
    assert config.load().store_url()[0] == "gs://elsewhere"


def test_allowed_cloud_without_bucket_uses_a_stable_per_user_bucket(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "allowed_clouds: [gs]\n"))
    url, options = cfg.store_url()
    assert url.startswith("gs://konduktor-filemounts-")
    assert options.create_bucket
    assert cfg.store_url()[0] == url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alowed_clouds: [s3]\n", "did you mean 'allowed_clouds'"),
        ("sync:\n  compresion_level: 3\n", "did you mean sync.compression_level"),
        ("sync:\n  store:\n    endpoint: x\n", "did you mean sync.store.endpoint_url"),
        ("allowed_clouds: [s4]\n", "did you mean 's3'"),
        ("allowed_clouds: s3\n", "must be a list"),
        ("jobs:\n  bucket: ftp://x\n", "unknown scheme"),
        ("jobs:\n  bucket: s3://Bad_Name\n", "malformed"),
        ("sync:\n  compression_level: fast\n", "must be an integer"),
        ("sync:\n  compression_level: 40\n", "between 1 and 22"),
        ("sync:\n  store:\n    retry_mode: legacy\n", "standard or adaptive"),
        ("- just\n- a list\n", "mapping"),
        ("sync: [1\n", "cannot read"),
        ("hook:\n  strict: true\n", "did you mean 'hooks'"),
        ("hooks:\n  stirct: true\n", "did you mean hooks.strict?"),
        ("hooks:\n  strict: always\n", "hooks.strict must be true or false"),
        ("hooks:\n  timeout: 0\n", "hooks.timeout must be a number of seconds above 0"),
        ("hooks:\n  timeout: true\n", "hooks.timeout must be an integer or a number"),
        ("hooks:\n  strict: true\n  background: true\n", "exclude each other"),
        ("hooks:\n  sync_roots: train\n", "hooks.sync_roots must be a list"),
        ("hooks:\n  sync_roots: [/abs]\n", "relative to the repository root"),
        ("hooks:\n  sync_roots: [train/../..]\n", "relative to the repository root"),
        ("hooks:\n  sync_roots: [3]\n", "relative to the repository root"),
    ],
)
def test_invalid_config_names_file_key_and_fix(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=str(path)) as raised:
        config.load(path)
    assert message in str(raised.value)


def test_store_for_a_cloud_prefers_the_matching_bucket(tmp_path: Path, home: Path) -> None:
    cfg = config.load(write(tmp_path, "jobs:\n  bucket: s3://team\n"))
    assert cfg.store_url("s3")[0] == "s3://team"
    url, options = cfg.store_url("gs")
    assert url.startswith("gs://konduktor-filemounts-")
    assert options.create_bucket
    assert cfg.store_url("file")[0] == f"file://{home / 'store'}"


def test_hooks_section(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, "sync: {}\n")).hooks == config.HookSettings()
    cfg = config.load(
        write(
            tmp_path,
            "hooks:\n  strict: true\n  timeout: 2.5\n"
            "  sync_roots: [train/, ./train, tools//sub, .]\n",
        )
    )
    assert cfg.hooks == config.HookSettings(
        strict=True, timeout=2.5, background=False, sync_roots=("train", "tools/sub", ".")
    )
    assert config.load(write(tmp_path, "hooks:\n  background: true\n")).hooks.background


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sync:\n  store:\n    max_attempts: 0\n", "sync.store.max_attempts must be between 1"),
        ("sync:\n  presign_seconds: 604801\n", "sync.presign_seconds must be between 1 and 604800"),
        ("sync:\n  soft_limit_mb: 5\n  hard_limit_mb: 4\n", "soft_limit_mb (5) is above"),
        ("sync:\n  hard_limit_mb: .inf\n", "sync.hard_limit_mb must be a number of MB above 0"),
        ("hooks:\n  timeout: .nan\n", "hooks.timeout must be a number of seconds above 0"),
        ("sync:\n  store:\n    endpoint_url: s3.example.com\n", "not http(s)://host[:port]"),
        ("sync: [1\n", "config.yaml:2:1: cannot read the config file: not valid YAML: expected"),
        ("sync: {}\nsync: {}\n", "config.yaml:2:1: cannot read the config file: not valid YAML"),
        ("a: &a {}\nsync: *a\n", "alias *a is refused"),
    ],
)
def test_out_of_range_and_misleading_config_is_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        config.load(write(tmp_path, text))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_all_range_problems_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "sync:\n  presign_seconds: 0\n  store:\n    max_attempts: 0\n")
    with pytest.raises(ConfigError, match=r"presign_seconds .*; sync\.store\.max_attempts"):
        config.load(path)


def test_credentials_in_the_endpoint_are_refused_without_echoing_them(tmp_path: Path) -> None:
    path = write(tmp_path, "sync:\n  store:\n    endpoint_url: http://AKIA1:t0ps3cret@h:9000\n")
    with pytest.raises(ConfigError) as raised:
        config.load(path)
    assert "credentials" in str(raised.value)
    assert "t0ps3cret" not in str(raised.value)
    assert "AKIA1" not in str(raised.value)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000", "https://s3.eu-west-1.amazonaws.com", "http://[::1]:9000/s3"]
)
def test_endpoint_forms_that_are_accepted(tmp_path: Path, url: str) -> None:
    cfg = config.load(write(tmp_path, f"sync:\n  store:\n    endpoint_url: '{url}'\n"))
    assert cfg.store.endpoint_url == url


def test_a_hard_limit_below_the_default_soft_limit_lowers_it(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "sync:\n  hard_limit_mb: 50\n"))
    assert (cfg.soft_limit_mb, cfg.hard_limit_mb) == (50, 50)


def test_a_config_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"jobs:\n  bucket: s3://caf\xe9\n")
    with pytest.raises(
        ConfigError, match=r"config\.yaml:2: cannot read the config file: not UTF-8"
    ):
        config.load(path)


# -- config.yaml is Konduktor's, sync.yaml ours ---------------------------------------------------


def write_sync(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "sync.yaml"
    path.write_text(text)
    return path


def test_our_sections_are_read_from_sync_yaml(
    tmp_path: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "allowed_clouds: [s3]\njobs:\n  bucket: s3://team/code\n")
    sync = write_sync(
        home,
        "sync:\n  compression_level: 7\n  bucket: file:///srv/k\n"
        "hooks:\n  strict: true\ngit:\n  ssh_secret: repo-key\n",
    )
    cfg = config.load(path)
    assert (cfg.path, cfg.sync_path) == (path, sync)
    assert cfg.compression_level == 7
    assert cfg.hooks.strict
    assert cfg.git_ssh_secret == "repo-key"
    assert cfg.store_url()[0] == "file:///srv/k"  # sync.bucket wins over jobs.bucket
    assert cfg.where("git") == sync
    assert caplog.messages == []


def test_sync_yaml_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text("sync:\n  compression_level: 9\n")
    monkeypatch.setenv("KONDUKTOR_SYNC_CONFIG", str(elsewhere))
    cfg = config.load()
    assert (cfg.compression_level, cfg.sync_path) == (9, elsewhere)


def test_sections_left_in_config_yaml_are_read_with_one_warning_saying_how_to_move_them(
    tmp_path: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "jobs:\n  bucket: s3://team\nsync:\n  compression_level: 4\nhooks: {}\n")
    cfg = config.load(path)
    assert cfg.compression_level == 4
    assert cfg.where("sync") == path
    assert len(caplog.messages) == 1
    message = caplog.messages[0]
    assert message == (
        f"{path} holds konduktor's sync:, hooks: which Konduktor refuses (unsupported field): "
        f"cut them from {path} and paste them unchanged into {home / 'sync.yaml'}"
    )
    config.load(path)
    assert len(caplog.messages) == 1  # once per process


def test_a_section_in_both_files_sync_yaml_wins(
    tmp_path: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "sync:\n  compression_level: 4\ngit:\n  ssh_secret: old\n")
    write_sync(home, "sync:\n  compression_level: 8\n")
    cfg = config.load(path)
    assert cfg.compression_level == 8
    assert cfg.git_ssh_secret == "old"  # only in config.yaml: still read
    assert any("sync: is ignored" in m and "it wins" in m for m in caplog.messages)
    assert any("git:" in m and "paste it unchanged" in m for m in caplog.messages)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allowed_clouds: [s3]\n", "allowed_clouds is one of Konduktor's keys: move it to"),
        ("syncc:\n  compression_level: 3\n", "did you mean 'sync'?"),
        ("sync:\n  compresion_level: 3\n", "did you mean sync.compression_level"),
        ("hooks:\n  timeout: 0\n", "hooks.timeout must be a number of seconds above 0"),
        ("sync:\n  bucket: ftp://x\n", "sync.bucket: store URL 'ftp://x' has an unknown scheme"),
        ("sync:\n  presign_seconds: 0\n", "sync.presign_seconds must be between"),
    ],
)
def test_mistakes_in_sync_yaml_name_it(home: Path, text: str, message: str) -> None:
    path = write_sync(home, text)
    with pytest.raises(ConfigError, match=str(path)) as raised:
        config.load()
    assert message in str(raised.value)


def test_kubernetes_keys_are_read(tmp_path: Path) -> None:
    text = (
        "kubernetes:\n  allowed_contexts: [prod]\n  provision_timeout: 10\n"
        "  pod_config:\n    spec:\n      imagePullSecrets: [{name: regcred}]\n"
        "  jobset_config:\n    spec:\n      ttlSecondsAfterFinished: 60\n"
    )
    cfg = config.load(write(tmp_path, text))
    assert cfg.allowed_contexts == ("prod",)
    assert cfg.pod_config == {"spec": {"imagePullSecrets": [{"name": "regcred"}]}}
    assert cfg.jobset_config == {"spec": {"ttlSecondsAfterFinished": 60}}
    assert config.load(write(tmp_path, "kubernetes: {}\n")).pod_config == {}


def test_more_than_one_allowed_context_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config.load(write(tmp_path, "kubernetes:\n  allowed_contexts: [a, b]\n"))
    assert cfg.allowed_contexts == ()
    assert "lists 2 contexts" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kubernetes:\n  pod_config: [1]\n", "kubernetes.pod_config must be a mapping, not a list"),
        (
            "kubernetes:\n  pod_config:\n    spec: 3\n",
            "kubernetes.pod_config.spec must be a mapping",
        ),
        (
            "kubernetes:\n  pod_config:\n    spec:\n      volumes: [data]\n",
            "kubernetes.pod_config.spec.volumes must be a list of mappings with a name",
        ),
        (
            "kubernetes:\n  pod_config:\n    spec:\n      containers: {env: []}\n",
            "kubernetes.pod_config.spec.containers must be a list of mappings, as in a pod",
        ),
        (
            "kubernetes:\n  pod_config:\n    spec:\n      containers: [{env: [{value: x}]}]\n",
            "kubernetes.pod_config.spec.containers[0].env must be a list of mappings with a name",
        ),
        ("kubernetes:\n  jobset_config: x\n", "kubernetes.jobset_config must be a mapping"),
        ("kubernetes:\n  allowed_contexts: prod\n", "kubernetes.allowed_contexts must be a list"),
        ("kubernetes: []\n", "kubernetes must be a mapping"),
        ("kubernets: {}\n", "did you mean 'kubernetes'"),
    ],
)
def test_bad_kubernetes_keys(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=str(path)) as raised:
        config.load(path)
    assert message in str(raised.value)


def test_unknown_jobs_keys_are_ignored_with_a_did_you_mean(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "jobs:\n  buckt: s3://team\n  controller: {}\n")
    cfg = config.load(path)
    assert cfg.bucket is None
    assert caplog.messages == [
        f"{path}: jobs.buckt is not read by konduktor or Konduktor; did you mean jobs.bucket? "
        "it is ignored",
        f"{path}: jobs.controller is not read by konduktor or Konduktor; it is ignored",
    ]


def test_allowed_clouds_as_konduktor_reads_them(tmp_path: Path) -> None:
    """aws and gcp name storage, SkyPilot's compute clouds (kubernetes) are dropped."""
    cfg = config.load(write(tmp_path, "allowed_clouds: [kubernetes, GCP, aws, gs]\n"))
    assert cfg.allowed_clouds == ("gs", "s3")


def test_konduktors_other_keys_are_left_alone(tmp_path: Path) -> None:
    text = "ssh:\n  enable: true\ntailscale:\n  secret_name: ts\nlogs:\n  timeout: 3\n"
    assert config.load(write(tmp_path, text)).path is not None


# -- Konduktor's own schema reads config.yaml -----------------------------------------------------

UPSTREAM = Path(__file__).parent.parent / "fixtures" / "upstream"
README = Path(__file__).parent.parent / "README.md"


def upstream_accepts(data: object) -> list[str]:
    """The errors Konduktor's config schema finds in *data* (its published package's schema,
    checked as Konduktor checks it: Draft 7 plus a case-insensitive enum)."""
    import json

    import jsonschema

    def case_insensitive_enum(
        validator: object, enums: list[str], instance: object, schema: object
    ) -> Iterator[jsonschema.ValidationError]:
        if isinstance(instance, str) and instance.lower() not in [e.lower() for e in enums]:
            yield jsonschema.ValidationError(f"{instance!r} is not one of {enums!r}")

    schema = json.loads((UPSTREAM / "config_schema.json").read_text())
    checker = jsonschema.validators.extend(
        jsonschema.Draft7Validator, {"case_insensitive_enum": case_insensitive_enum}
    )
    return [error.message for error in checker(schema).iter_errors(data)]


def readme_block(title: str) -> str:
    """The README's YAML block whose first line is ``# <title>...``."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    return next(b for b in blocks if b.startswith(f"# {title}"))


def test_the_documented_config_yaml_is_accepted_by_konduktors_schema(home: Path) -> None:
    text = readme_block("~/.konduktor/config.yaml")
    assert upstream_accepts(yaml.safe_load(text)) == []
    path = home / "config.yaml"
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    sync = write_sync(home, readme_block("~/.konduktor/sync.yaml"))
    cfg = config.load()  # and both documented files are what we read
    assert (cfg.path, cfg.sync_path) == (path, sync)
    assert cfg.allowed_contexts == ("my-cluster",)
    assert cfg.git_ssh_secret == "repo-key"


def test_our_sections_in_config_yaml_are_refused_by_konduktors_schema() -> None:
    """Why they moved: the layout of before makes Konduktor refuse the whole file."""
    for section in ("sync", "hooks", "git"):
        errors = upstream_accepts({"allowed_clouds": ["s3"], section: {}})
        assert errors == [f"Additional properties are not allowed ('{section}' was unexpected)"]
    assert upstream_accepts({"jobs": {"bucket": "file:///srv/k"}}) != []  # hence sync.bucket
    assert upstream_accepts({"allowed_clouds": ["s4"]}) != []  # the check itself works
