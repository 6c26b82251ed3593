"""Credential redaction: passwords and token-like query values never survive, everything else is unchanged."""

import pytest

from yolov1.redact import MASK, redact, redact_url

SECRET = "S3cr3t-planted"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"https://alice:{SECRET}@mlflow.example:5000/api", f"https://alice:{MASK}@mlflow.example:5000/api"),
        (f"http://{SECRET}@host/x", f"http://{MASK}@host/x"),  # a bare token as the user part
        (f"postgresql://mlflow:{SECRET}@127.0.0.1:5432/db", f"postgresql://mlflow:{MASK}@127.0.0.1:5432/db"),
        (f"https://h/f.tar?X-Amz-Signature={SECRET}&v=1", f"https://h/f.tar?X-Amz-Signature={MASK}&v=1"),
        (f"https://h/f.tar?access_token={SECRET}", f"https://h/f.tar?access_token={MASK}"),
        (f"https://h/f.tar?sig={SECRET}&se=2026", f"https://h/f.tar?sig={MASK}&se=2026"),
        ("https://h/f.tar?page=2&sort=a%20b", "https://h/f.tar?page=2&sort=a%20b"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),  # urlunsplit alone would drop the empty authority  # nothing secret: byte-identical
        ("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
         "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected
    assert redact_url(expected) == expected  # idempotent


def test_redact_finds_urls_inside_prose_and_reprs():
    text = (f"GET http://u:{SECRET}@h/x?token={SECRET}: connection refused; "
            f"tried ['https://h2/a?key={SECRET}', \"s3://bucket/k\"].")
    out = redact(text)
    assert SECRET not in out
    assert out.endswith("connection refused; tried ['https://h2/a?key=***', \"s3://bucket/k\"].")


@pytest.mark.parametrize("value", ["", "no url at all", "a:b@c", "http://[::1", 42, None, "http://[bad@x"])
def test_redact_never_raises_and_keeps_non_urls(value):
    out = redact(value)
    assert isinstance(out, str)
    if isinstance(value, str) and "://" not in value:
        assert out == value


@pytest.mark.parametrize("url", [f"http://u:{SECRET}@[::1/x", f"http://[::1/x?token={SECRET}&a=1"])
def test_redact_handles_urls_urlsplit_rejects(url):
    assert SECRET not in redact(url)
    assert SECRET not in redact_url(url)
