"""Webhooks without I/O beyond the test: the SSRF rule (at load and after resolution), the
directory's validation, and signatures checked by the Standard Webhooks reference library."""

from __future__ import annotations

import base64
import random
import re
import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from cdr.notify.delivery import backoff_s, retry_after
from cdr.notify.signing import message_id, signature
from cdr.notify.ssrf import Refused, literal_refusal, system_resolver, target
from cdr.settings import SettingsError
from cdr.tenants import read_tenants_file

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
NEXT_SECRET = "whsec_" + base64.b64encode(b"n" * 32).decode()


def resolving_to(*addresses: str):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
        ("https://10.20.30.40/hook", "10.20.30.40 is a private address"),
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local"),
        ("https://[::1]:8443/hook", "::1 is a loopback address"),
        ("https://100.64.1.1/hook", "CGNAT"),
        ("https://[fd00::1]/hook", "private"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://[::ffff:10.0.0.1]/hook", "10.0.0.1 is a private address"),
        ("http://93.184.216.34/hook", "https is required"),
    ],
)
async def test_literal_addresses_outside_the_public_internet_are_refused_with_the_reason(url: str, why: str) -> None:
    reason = literal_refusal(url, allow_private=False)
    assert reason is not None and why in reason
    with pytest.raises(Refused, match=re.escape(why)):
        await target(url, resolving_to("93.184.216.34"), allow_private=False)
    assert literal_refusal(url, allow_private=True) is None


async def test_a_name_is_checked_after_resolution_and_the_checked_address_is_the_one_reached() -> None:
    with pytest.raises(Refused, match=r"internal\.example resolves to 10\.0\.0\.5 is a private address"):
        await target("https://internal.example/hook", resolving_to("10.0.0.5"), allow_private=False)
    # One private answer among public ones is enough to refuse (a rebinding attempt).
    with pytest.raises(Refused, match=re.escape("169.254.169.254")):
        await target(
            "https://mixed.example/hook", resolving_to("93.184.216.34", "169.254.169.254"), allow_private=False
        )
    # The system's resolver: localhost is a loopback name.
    with pytest.raises(Refused, match=r"localhost resolves to .* loopback"):
        await target("https://localhost/hook", system_resolver, allow_private=False)
    where = await target("https://crm.example:8443/in?x=1", resolving_to("93.184.216.34"), allow_private=False)
    assert where.url == "https://93.184.216.34:8443/in?x=1"
    assert where.host == "crm.example:8443" and where.sni == "crm.example"
    plain = await target("http://localhost:9000/h", resolving_to("127.0.0.1"), allow_private=True)
    assert plain.url == "http://127.0.0.1:9000/h" and plain.sni is None


def test_signatures_verify_with_the_reference_library_under_either_secret_of_a_rotation() -> None:
    body = b'{"data":[{"id":"x"}]}'
    msg_id = message_id("t1/crm", [("x", "2026-12-07T10:00:00.000Z")])
    stamp = int(time.time())
    header = signature((SECRET, NEXT_SECRET), msg_id, stamp, body)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": header}
    for secret in (SECRET, NEXT_SECRET):
        assert Webhook(secret).verify(body, headers) == {"data": [{"id": "x"}]}
    with pytest.raises(Exception, match="No matching signature"):
        Webhook("whsec_" + base64.b64encode(b"z" * 32).decode()).verify(body, headers)
    # The id is the batch's: the same for a retry, another for another batch or endpoint.
    assert msg_id == message_id("t1/crm", [("x", "2026-12-07T10:00:00.000Z")])
    assert msg_id != message_id("t1/other", [("x", "2026-12-07T10:00:00.000Z")])


def test_back_off_is_jittered_bounded_and_honours_retry_after() -> None:
    rng = random.Random(1)
    waits = [backoff_s(n, base_s=1, cap_s=300, asked_s=None, rng=rng) for n in range(20)]
    assert all(0 <= w <= min(300, 2**n) for n, w in enumerate(waits))
    assert len(set(waits)) == len(waits)  # jittered
    assert backoff_s(0, base_s=1, cap_s=300, asked_s=30, rng=rng) == 30
    assert backoff_s(0, base_s=1, cap_s=60, asked_s=3600, rng=rng) == 60
    assert retry_after("7", 0) == 7
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470) == 10
    assert retry_after("soon", 0) is None


def write(tmp_path: Path, hooks: str) -> Path:
    path = tmp_path / "tenants.yaml"
    path.write_text(f"tenants:\n  acme.vn:\n    tokens: ['{'a' * 64}']\n    webhooks:\n{hooks}")
    return path


@pytest.mark.parametrize(
    ("hooks", "problem"),
    [
        (
            f"      - {{name: crm, url: 'ftp://x.example/', secrets: [{SECRET}]}}\n",
            "webhooks.0.url: a webhook url is http(s)",
        ),
        ("      - {name: crm, url: 'https://x.example/', secrets: [whsec_not base64]}\n", "webhooks.0.secrets"),
        ("      - {name: crm, url: 'https://x.example/', secrets: [abc]}\n", "whsec_ followed by base64"),
        (f"      - {{name: Crm!, url: 'https://x.example/', secrets: [{SECRET}]}}\n", "webhooks.0.name"),
        (
            f"      - {{name: crm, url: 'https://x.example/', secrets: [{SECRET}]}}\n"
            f"      - {{name: crm, url: 'https://y.example/', secrets: [{SECRET}]}}\n",
            "the name 'crm' is used twice",
        ),
        (
            f"      - {{name: crm, url: 'https://x.example/', secrets: [{SECRET}], filters: {{direction: up}}}}\n",
            "direction",
        ),
    ],
)
def test_the_directory_names_the_tenant_and_field_of_a_bad_webhook(tmp_path: Path, hooks: str, problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        read_tenants_file(write(tmp_path, hooks))
    assert "tenant 'acme.vn'" in str(caught.value)
    assert problem in str(caught.value)


def test_a_valid_webhook_reads_with_the_feeds_filter_names(tmp_path: Path) -> None:
    hooks = (
        f"      - {{name: crm-1, url: 'https://x.example/h', secrets: [{SECRET}, {NEXT_SECRET}],"
        " filters: {direction: inbound, status: answered}, enabled: false}\n"
    )
    entry = read_tenants_file(write(tmp_path, hooks))["acme.vn"]
    (hook,) = entry.webhooks
    assert (hook.name, hook.enabled, hook.filters.direction, hook.filters.status) == ("crm-1", False, 1, "ANSWERED")
