from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from service.settings import DEFAULT_DATABASE_URL, Settings, SettingsError, load_settings, mask_url_password
from tests.support import ROOT, free_port


def test_defaults_when_nothing_is_set() -> None:
    s = load_settings({})
    assert s == Settings()
    assert (s.port, s.log_level, s.access_log, s.cors_origins) == (8000, "info", True, ())
    assert (s.max_body_bytes, s.request_timeout) == (65536, 10.0)
    assert (s.github_owner, s.github_token, s.github_api_url) == (None, None, "https://api.github.com")
    assert (s.github_timeout, s.github_cache_ttl, s.github_stale_ttl) == (10.0, 300.0, 86400.0)
    assert s.database_url == DEFAULT_DATABASE_URL and s.database_url.startswith("sqlite:///data/")
    assert s.admin_token is None


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("PORT", "5000", "port", 5000),
        ("HOST", "127.0.0.1", "host", "127.0.0.1"),
        ("LOG_LEVEL", "DEBUG", "log_level", "debug"),
        ("ACCESS_LOG", "false", "access_log", False),
        ("ACCESS_LOG", "0", "access_log", False),
        ("CORS_ORIGINS", "https://a.example, https://b.example", "cors_origins", ("https://a.example", "https://b.example")),
        ("MAX_BODY_BYTES", "1024", "max_body_bytes", 1024),
        ("REQUEST_TIMEOUT", "2.5", "request_timeout", 2.5),
        ("WEB_CONCURRENCY", "3", "web_concurrency", 3),
        ("GITHUB_OWNER", "octo-dev", "github_owner", "octo-dev"),
        ("GITHUB_TOKEN", "ghp_example", "github_token", "ghp_example"),
        ("GITHUB_API_URL", "http://127.0.0.1:9000", "github_api_url", "http://127.0.0.1:9000"),
        ("GITHUB_TIMEOUT", "3", "github_timeout", 3.0),
        ("GITHUB_CACHE_TTL", "0", "github_cache_ttl", 0.0),
        ("GITHUB_STALE_TTL", "60", "github_stale_ttl", 60.0),
        ("DATABASE_URL", "postgres://u:p@db.example:5432/site", "database_url", "postgres://u:p@db.example:5432/site"),
        ("ADMIN_TOKEN", "s3cret-admin-token-0123", "admin_token", "s3cret-admin-token-0123"),
        ("DATABASE_POOL_SIZE", "12", "database_pool_size", 12),
        ("WEB_DYNOS", "2", "web_dynos", 2),
        ("DATABASE_MAX_CONNECTIONS", "120", "database_max_connections", 120),
        ("ALLOW_EPHEMERAL_DATABASE", "true", "allow_ephemeral_database", True),
        ("GITHUB_WEBHOOK_SECRET", "whsec-0123456789abcdef", "github_webhook_secret", "whsec-0123456789abcdef"),
        ("METRICS_TOKEN", "metrics-0123456789abcdef", "metrics_token", "metrics-0123456789abcdef"),
        ("GITHUB_TOKEN", "github_pat_11ABC_x~!#$%&'*+-.^`|", "github_token", "github_pat_11ABC_x~!#$%&'*+-.^`|"),
        (
            "DEPLOY_HOOK_URLS",
            "https://api.netlify.com/build_hooks/abc, http://127.0.0.1:9000/h",
            "deploy_hook_urls",
            ("https://api.netlify.com/build_hooks/abc", "http://127.0.0.1:9000/h"),
        ),
        ("DEPLOY_HOOK_URLS", "http://localhost:9000/h", "deploy_hook_urls", ("http://localhost:9000/h",)),
        ("DEPLOY_HOOK_URLS", "http://[::1]:9000/h", "deploy_hook_urls", ("http://[::1]:9000/h",)),
        ("DEPLOY_HOOK_SECRET", "hook-secret-0123456789", "deploy_hook_secret", "hook-secret-0123456789"),
        ("DEPLOY_HOOK_DEBOUNCE", "0", "deploy_hook_debounce", 0.0),
        ("DEPLOY_HOOK_EVENTS", "github, announcements", "deploy_hook_events", ("github", "announcements")),
    ],
)
def test_good_value_is_used(name: str, value: str, attribute: str, expected: object) -> None:
    assert getattr(load_settings({name: value}), attribute) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "-1"),
        ("HOST", "0.0.0.0; rm -rf /"),
        ("PORT", "http"),
        ("PORT", "70000"),
        ("LOG_LEVEL", "loud"),
        ("ACCESS_LOG", "maybe"),
        ("MAX_BODY_BYTES", "0"),
        ("REQUEST_TIMEOUT", "nan"),
        ("REQUEST_TIMEOUT", "-3"),
        ("WEB_CONCURRENCY", "0"),
        ("GITHUB_OWNER", "not/a/login"),
        ("GITHUB_API_URL", "ftp://example.org"),
        ("GITHUB_TIMEOUT", "abc"),
        ("GITHUB_TIMEOUT", "45"),
        ("GITHUB_CACHE_TTL", "-1"),
        ("GITHUB_STALE_TTL", "soon"),
        ("DATABASE_URL", "mysql://localhost/db"),
        ("ADMIN_TOKEN", "short"),
        ("DATABASE_POOL_SIZE", "0"),
        ("DATABASE_POOL_SIZE", "41"),
        ("WEB_DYNOS", "0"),
        ("DATABASE_MAX_CONNECTIONS", "0"),
        ("ALLOW_EPHEMERAL_DATABASE", "perhaps"),
        # What an HTTP header can carry: visible ASCII, no spaces, no control characters.
        ("GITHUB_TOKEN", "ghp_tökén0123456789"),
        ("GITHUB_TOKEN", "ghp_two words"),
        ("GITHUB_TOKEN", "ghp_line\nbreak"),
        ("ADMIN_TOKEN", "admin-tökén-0123456789"),
        ("ADMIN_TOKEN", "admin token 0123456789"),
        ("METRICS_TOKEN", "metrics-tökén-0123456789"),
        ("METRICS_TOKEN", "short"),
        ("GITHUB_WEBHOOK_SECRET", "short"),
        ("DEPLOY_HOOK_URLS", "ftp://example.org/hook"),
        ("DEPLOY_HOOK_URLS", "https://a.example/1,https://b.example/has space"),
        ("DEPLOY_HOOK_URLS", ",".join(f"https://a.example/{n}" for n in range(11))),
        ("DEPLOY_HOOK_SECRET", "short"),
        ("DEPLOY_HOOK_DEBOUNCE", "3601"),
        ("DEPLOY_HOOK_EVENTS", "pushes"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({name: value})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"invalid {name}=")
    assert "expected " in message


def test_a_deploy_hook_url_in_clear_to_another_host_is_refused_and_its_path_never_shown() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"DEPLOY_HOOK_URLS": "http://hooks.example/build_hooks/SECRETID?trigger_title=x"})
    message = str(caught.value)
    assert "DEPLOY_HOOK_URLS" in message and "http://hooks.example/***" in message
    assert "SECRETID" not in message and "\n" not in message
    with pytest.raises(SettingsError) as caught:
        load_settings({"DEPLOY_HOOK_URLS": "https://ok.example/1,nope://x/SECRETID"})
    assert "SECRETID" not in str(caught.value)


def test_deploy_hooks_on_github_need_an_owner_and_a_url_given_twice_is_one() -> None:
    with pytest.raises(SettingsError, match="DEPLOY_HOOK_EVENTS names github but GITHUB_OWNER is not set"):
        load_settings({"DEPLOY_HOOK_URLS": "https://a.example/h", "DEPLOY_HOOK_EVENTS": "github"})
    twice = load_settings({"DEPLOY_HOOK_URLS": "https://a.example/h, https://b.example/h, https://a.example/h"})
    assert twice.deploy_hook_urls == ("https://a.example/h", "https://b.example/h")


@pytest.mark.parametrize(
    "url",
    [
        "https://api.netlify.com\\build_hooks\\SECRETID",
        "https://api.netlify.com%2Fbuild_hooks%2FSECRETID",
        "https://a b/SECRETID",
    ],
)
def test_a_malformed_deploy_hook_url_shows_nothing_of_itself(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"DEPLOY_HOOK_URLS": url})
    assert "SECRETID" not in str(caught.value) and "DEPLOY_HOOK_URLS" in str(caught.value)


def test_public_view_shows_only_each_deploy_hook_url_s_host() -> None:
    view = load_settings(
        {"DEPLOY_HOOK_URLS": "https://api.netlify.com/build_hooks/SECRETID?x=1", "DEPLOY_HOOK_SECRET": "hook-secret-0123456789"}
    ).public_view()
    assert view["DEPLOY_HOOK_URLS"] == ["https://api.netlify.com/***"] and view["DEPLOY_HOOK_SECRET"] == "***"


def test_empty_value_means_default() -> None:
    assert load_settings({"PORT": "", "GITHUB_OWNER": "  "}) == Settings()


def test_secret_values_never_appear_in_errors() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"ADMIN_TOKEN": "tiny"})
    assert "tiny" not in str(caught.value)


# A database password in a URL the service cannot use, each for a different reason: not a supported
# scheme, a broken percent-escape libpq refuses, an IPv6 host missing its closing bracket.
BAD_DATABASE_URLS = ["mysql://u:S3cretPw@h/db", "postgresql://u:S3cret%zzPw@h/db", "postgresql://u:S3cretPw@[::1/db"]


@pytest.mark.parametrize("url", BAD_DATABASE_URLS)
def test_bad_database_url_is_one_line_with_its_password_masked(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"DATABASE_URL": url})
    message = str(caught.value)
    assert message.startswith("invalid DATABASE_URL=") and "\n" not in message
    assert "S3cret" not in message and "u:***@" in message


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgres://user:dbpass@host:5432/db", "postgres://user:***@host:5432/db"),
        ("postgres://user@host/db", "postgres://user@host/db"),
        ("postgres://host/db?password=dbpass&sslmode=require", "postgres://host/db?password=***&sslmode=require"),
        ("postgres://u@host/db?sslmode=require&PASSWORD=dbpass", "postgres://u@host/db?sslmode=require&PASSWORD=***"),
        ("postgres://host/db?sslpassword=dbpass", "postgres://host/db?sslpassword=***"),
        ("postgres://u:db@pass@host/db", "postgres://u:***@host/db"),  # an unencoded @ in the password
        ("postgres://u:db?pass@host/db", "postgres://u:***@host/db"),  # an unencoded ? in the password
        ("postgresql://u:dbpass@[::1/db", "postgresql://u:***@[::1/db"),
        ("sqlite:///data/service.db", "sqlite:///data/service.db"),
    ],
)
def test_mask_url_password_hides_every_form_of_password(url: str, masked: str) -> None:
    assert mask_url_password(url) == masked


def test_public_view_masks_secrets_and_database_password() -> None:
    s = load_settings(
        {
            "GITHUB_TOKEN": "ghp_very_secret",
            "ADMIN_TOKEN": "admin-secret-0123456789",
            "DATABASE_URL": "postgres://user:dbpass@host:5432/db",
            "GITHUB_API_URL": "https://proxy:proxypass@ghe.example/api/v3",
        }
    )
    view = s.public_view()
    text = repr(view)
    for secret in ("ghp_very_secret", "admin-secret-0123456789", "dbpass", "proxypass"):
        assert secret not in text
    assert view["GITHUB_TOKEN"] == "***" and view["ADMIN_TOKEN"] == "***"
    assert view["DATABASE_URL"] == "postgres://user:***@host:5432/db"
    assert view["GITHUB_API_URL"] == "https://proxy:***@ghe.example/api/v3"


def _run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGS` with only `env` configured (loopback, a free port, in case it serves)."""
    clean = {k: v for k, v in os.environ.items() if k not in Settings.__struct_encode_fields__ and k != "DYNO"}
    loopback = {"HOST": "127.0.0.1", "PORT": str(free_port())}
    return subprocess.run(
        [sys.executable, "-m", "service", *args], env={**clean, **loopback, **env}, capture_output=True, text=True, timeout=60
    )


def test_check_config_prints_masked_settings_and_exits_0() -> None:
    done = _run_cli("check-config", GITHUB_TOKEN="ghp_cli_secret", GITHUB_OWNER="octo-dev")
    assert done.returncode == 0, done.stderr
    assert '"GITHUB_OWNER": "octo-dev"' in done.stdout
    assert "ghp_cli_secret" not in done.stdout + done.stderr


def test_bad_value_stops_start_up_with_one_line() -> None:
    done = _run_cli("serve", GITHUB_TIMEOUT="abc")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "GITHUB_TIMEOUT" in done.stderr and "Traceback" not in done.stderr


def test_uvicorn_import_of_app_fails_with_the_same_line() -> None:
    clean = {k: v for k, v in os.environ.items() if k not in Settings.__struct_encode_fields__}
    done = subprocess.run(
        [sys.executable, "-c", "import service.app; service.app.app"],
        env={**clean, "PORT": "-1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "configuration error: invalid PORT='-1': expected int >= 1; expected an integer from 1 to 65535"


@pytest.mark.parametrize("command", ["serve", "migrate", "check-config"])
@pytest.mark.parametrize("url", BAD_DATABASE_URLS)
def test_bad_database_url_stops_every_command_without_printing_the_password(command: str, url: str) -> None:
    done = _run_cli(command, DATABASE_URL=url)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert "S3cret" not in output
    assert done.stdout == "" and done.stderr.count("\n") == 1 and "Traceback" not in output
    assert done.stderr.startswith("configuration error: invalid DATABASE_URL='") and "u:***@" in done.stderr


def test_check_config_masks_a_password_given_as_a_query_parameter() -> None:
    done = _run_cli("check-config", DATABASE_URL="postgresql://u@db.example/site?password=S3cretPw&sslmode=require")
    assert done.returncode == 0, done.stderr
    assert "S3cretPw" not in done.stdout + done.stderr
    assert '"DATABASE_URL": "postgresql://u@db.example/site?password=***&sslmode=require"' in done.stdout


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_github_token_no_http_header_can_carry_stops_start_up_with_one_line(command: str) -> None:
    done = _run_cli(command, GITHUB_OWNER="octo-dev", GITHUB_TOKEN="ghp_tökén_S3cret")
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert done.stdout == "" and "Traceback" not in output and "S3cret" not in output
    assert done.stderr.startswith("configuration error: invalid GITHUB_TOKEN=***: ") and done.stderr.count("\n") == 1
    assert "visible ASCII" in done.stderr


def test_check_config_prints_every_variable_the_service_reads_with_secrets_masked() -> None:
    """check-config also prints what the libraries read (OTEL_*, PROMETHEUS_MULTIPROC_DIR), and .env.example
    lists every variable it prints."""
    done = _run_cli(
        "check-config",
        OTEL_EXPORTER_OTLP_ENDPOINT="https://user:otlpSECRET@collector.example:4318",
        OTEL_EXPORTER_OTLP_HEADERS="x-api-key=headerSECRET",
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("https://user:")
    assert "otlpSECRET" not in done.stdout and "headerSECRET" not in done.stdout
    assert printed["OTEL_EXPORTER_OTLP_HEADERS"] == "***"
    example = (ROOT / ".env.example").read_text()
    missing = [name for name in printed if not re.search(rf"^#? ?{name}=", example, re.MULTILINE)]
    assert missing == [], f".env.example does not list {missing}"


def test_serve_limits_malloc_arenas_unless_told_otherwise() -> None:
    """Bench scenario 12: with glibc's default arenas a burst of reads in the thread pool left a worker ~50 MB
    larger; the web process and the workers it spawns get two, as Heroku advises, unless MALLOC_ARENA_MAX says."""
    from service.__main__ import MALLOC_ARENAS, MALLOC_MMAP_THRESHOLD, limit_malloc_arenas

    unset: dict[str, str] = {}
    limit_malloc_arenas(unset)
    assert unset == {"MALLOC_ARENA_MAX": str(MALLOC_ARENAS), "MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD)}
    given = {"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "1048576"}
    limit_malloc_arenas(given)
    assert given == {"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "1048576"}
