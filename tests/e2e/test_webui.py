"""The web UI in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright),
against a real ``dnsmesh controller`` with a real ``dnsmesh agent`` connected to it.

One controller, agent and browser serve the whole module (each test has its own browser
context, so its own sessionStorage and login). Edits are made by typing into the page and
checked where they land: in the agent's DNS answers (dnspython), in the API, in pixels.

Set DNSMESH_WEBUI_SCREENSHOT=docs/webui-topology.png to keep the topology test's
screenshot: that is how the README's picture is made.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.mesh_support import Mesh, agent_id, agent_process, ask, mesh
from tests.integration.conftest import AgentProcess
from tests.support.policies import policy_doc
from tests.support.polling import wait_until

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 10_000  # for the page to show what the test did; an event takes milliseconds
WEB = "web.mesh.internal"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: scripts/test installs Debian's chromium package "
            "where apt-get can (as root); it could not be installed here"
        )
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        # Playwright downloads no browser here: it drives the system's.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def mesh_with_agent(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Mesh, AgentProcess]]:
    with mesh(tmp_path_factory.mktemp("webui")) as m:
        m.rest.put(web_policy(first=1, second=0))
        m.rest.put(policy_doc("db", [{"address": "127.0.20.1"}], ttl=5))
        with agent_process(m.agent_args()) as agent:
            wait_until(lambda: ask(agent, WEB) == ["127.0.10.1"], 10, "the agent's snapshot")
            yield m, agent


@pytest.fixture
def ui(mesh_with_agent: tuple[Mesh, AgentProcess]) -> Mesh:
    return mesh_with_agent[0]


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, errors  # no script failed while the test ran


def web_policy(first: int, second: int) -> dict[str, Any]:
    endpoints = [
        {"address": "127.0.10.1", "weight": first},
        {"address": "127.0.10.2", "weight": second},
    ]
    return policy_doc("web", endpoints, labels={"team": "payments"}, ttl=5)


def log_in(page: Page, ui: Mesh, role: str = "admin") -> None:
    page.goto(f"{ui.controller.url}/ui/")
    page.fill("#token", ui.tokens[role])
    page.click("#login button[type=submit]")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")


def test_log_in_and_see_a_policy(page: Page, ui: Mesh) -> None:
    log_in(page, ui)
    token = ui.tokens["admin"]
    assert token not in page.url
    assert page.evaluate("sessionStorage.getItem('dnsmesh.token')") == token
    expect(page.locator("tr[data-policy=db]")).to_be_visible()

    page.fill("#label-filter", "team=payments")
    page.click(".filter button[type=submit]")
    expect(page.locator("tr[data-policy=db]")).to_have_count(0)
    page.click("tr[data-policy=web] a")
    expect(page.locator("#policy-yaml")).to_contain_text(f"domain: {WEB}")
    expect(page.locator("#policy-yaml")).to_contain_text("team: payments")

    page.goto(f"{ui.controller.url}/ui/#/policies")
    page.fill("#label-filter", "no-equals-sign")
    page.click(".filter button[type=submit]")
    expect(page.locator("[data-error-for=label]")).to_be_visible()


def test_the_stream_parser_and_the_diff_in_the_browser(page: Page, ui: Mesh) -> None:
    """The two hand-written pieces, run as the page runs them: server-sent events split
    across chunks anywhere (inside a CRLF too), and the line diff."""
    page.goto(f"{ui.controller.url}/ui/")
    result = page.evaluate(
        r"""async () => {
        const { serverSentEvents } = await import("./live.js");
        const { diffLines } = await import("./diff.js");
        const chunks = ["event: revision\r", "\ndata: {\"revision\": 3}\r\n", "\r\n: ping\r\n",
          "\r\nevent: goodbye\ndata: a\ndata: b\n", "\n"];
        const body = new ReadableStream({ start(c) {
          for (const chunk of chunks) c.enqueue(new TextEncoder().encode(chunk));
          c.close();
        } });
        const events = [];
        for await (const event of serverSentEvents(body)) events.push(event);
        const diff = diffLines("a\nb\nc\n", "a\nx\nc\nd\n").map((l) => l.op + l.text);
        return { events, diff };
    }"""
    )
    assert result["events"] == [
        {"type": "revision", "data": '{"revision": 3}'},
        {"type": "goodbye", "data": "a\nb"},
    ]
    assert result["diff"] == [" a", "-b", "+x", " c", "+d"]


def test_a_bad_token_is_refused_at_login(page: Page, ui: Mesh) -> None:
    page.goto(f"{ui.controller.url}/ui/")
    page.fill("#token", "dnsm_not-a-token")
    page.click("#login button[type=submit]")
    expect(page.locator("#login .error")).to_contain_text("unknown or revoked")
    assert page.evaluate("sessionStorage.getItem('dnsmesh.token')") is None


def test_a_revoked_token_is_logged_out(page: Page, ui: Mesh) -> None:
    made = ui.rest.http.post("/v1/tokens", json={"name": "webui-short", "role": "viewer"})
    assert made.status_code == 201, made.text
    page.goto(f"{ui.controller.url}/ui/")
    page.fill("#token", made.json()["token"])
    page.click("#login button[type=submit]")
    expect(page.locator("tr[data-policy=web]")).to_be_visible()
    assert ui.rest.http.delete("/v1/tokens/webui-short").status_code == 200
    # Whichever comes first logs it out: the live stream, which the controller ends for a
    # revoked token and refuses to resume, or the next page's request. So the next page is
    # opened by its address: its link in the header is gone once the stream won the race.
    page.evaluate("location.hash = '#/agents'")
    expect(page.locator("#login .notice")).to_contain_text("the token is unknown or revoked")
    assert page.evaluate("sessionStorage.getItem('dnsmesh.token')") is None


def test_editing_a_weight_changes_the_agents_answer(
    page: Page, mesh_with_agent: tuple[Mesh, AgentProcess]
) -> None:
    ui, agent = mesh_with_agent
    assert ask(agent, WEB) == ["127.0.10.1"]
    log_in(page, ui)
    page.goto(f"{ui.controller.url}/ui/#/policies/web")
    page.click("#edit")
    page.fill('input[data-path="spec.endpoints[0].weight"]', "0")
    page.fill('input[data-path="spec.endpoints[1].weight"]', "1")
    page.click("#review")
    diff = page.locator("pre.diff")
    expect(diff.locator(".removed")).to_have_count(2)  # weight: 1 and weight: 0, the old ones
    expect(diff.locator(".added")).to_have_count(2)
    page.click("#save")
    expect(page.locator("#notice")).to_contain_text("Saved web as revision")
    wait_until(lambda: ask(agent, WEB) == ["127.0.10.2"], 10, "the agent answering the edit")
    reset = ui.rest.put(web_policy(first=1, second=0))  # as the other tests expect it
    wait_until(lambda: ask(agent, WEB) == ["127.0.10.1"], 10, "the agent answering the reset")

    # The agents page shows the agent running that revision (its ACK, read on a timer).
    page.click("header a[href='#/agents']")
    row = page.locator(f"tr[data-agent='{agent_id(agent)}']")
    expect(row.locator("[data-state]")).to_have_attribute("data-state", "converged")
    expect(row).to_contain_text(str(reset))


def test_a_validation_error_is_shown_at_its_field(page: Page, ui: Mesh) -> None:
    before = ui.rest.http.get("/v1/policies/web").json()
    log_in(page, ui)
    page.goto(f"{ui.controller.url}/ui/#/policies/web/edit")
    page.fill('input[data-path="spec.endpoints[1].weight"]', "-5")
    page.click("#review")
    error = page.locator('[data-error-for="spec.endpoints[1].weight"]')
    expect(error).to_contain_text("greater than or equal to 0")
    # The message sits beside the input it names.
    field = page.locator('.field:has(input[data-path="spec.endpoints[1].weight"])')
    expect(field).to_have_class("field invalid")
    expect(page.locator("#save")).to_have_count(0)
    assert ui.rest.http.get("/v1/policies/web").json() == before


def test_a_viewer_can_look_but_not_edit(page: Page, ui: Mesh) -> None:
    log_in(page, ui, "viewer")
    page.goto(f"{ui.controller.url}/ui/#/policies/web")
    expect(page.locator("#policy-yaml")).to_contain_text(WEB)
    expect(page.locator("#edit")).to_have_count(0)
    # Going to the editor anyway: the API's refusal is what the page shows.
    page.goto(f"{ui.controller.url}/ui/#/policies/web/edit")
    page.fill('input[data-path="spec.ttl"]', "9")
    page.click("#review")
    refusal = page.locator(".error[data-status='403']")
    expect(refusal).to_contain_text("role 'viewer' may not write policies")
    assert ui.rest.http.get("/v1/policies/web").json()["spec"]["ttl"] == 5
    # The refused write is in the audit trail, which a viewer may read.
    page.click("header a[href='#/audit']")
    refused = page.locator("tr.entry", has_text="write.refused").first
    expect(refused).to_contain_text("/v1/policies/web")
    refused.click()
    expect(page.locator("tr.detail pre.diff")).to_contain_text("may not write policies")


def test_the_page_refreshes_when_another_client_writes(page: Page, ui: Mesh) -> None:
    log_in(page, ui, "viewer")
    page.goto(f"{ui.controller.url}/ui/#/policies")
    expect(page.locator("tr[data-policy=web]")).to_be_visible()
    revision = ui.rest.put(policy_doc("live", [{"address": "127.0.30.1"}]))
    expect(page.locator("tr[data-policy=live]")).to_be_visible()
    expect(page.locator("#live")).to_have_attribute("data-revision", str(revision))
    ui.rest.delete("live")
    expect(page.locator("tr[data-policy=live]")).to_have_count(0)


# What two polling agents report: one link per colour the topology draws.
REPORTS = {
    "probe-a": [
        {"address": "127.0.10.1", "latency_ms": 2.0, "loss": 0.0, "state": "healthy"},
        {"address": "127.0.10.2", "latency_ms": 110.0, "loss": 0.0, "state": "healthy"},
        {"address": "127.0.20.1", "latency_ms": None, "loss": 1.0, "state": "ejected"},
    ],
    "probe-b": [{"address": "127.0.10.1", "latency_ms": 4.0, "loss": 0.0, "state": "healthy"}],
}


def test_the_topology_draws_latency_and_loss_as_colour(page: Page, ui: Mesh) -> None:
    with httpx.Client(
        base_url=ui.controller.url, headers={"Authorization": f"Bearer {ui.tokens['agent']}"}
    ) as agent_api:
        for agent_id, endpoints in REPORTS.items():
            hello = {"node_name": f"node-{agent_id}", "revision": 0}
            assert agent_api.post(f"/v1/agents/{agent_id}/ack", json=hello).status_code == 200
            report = {"type": "report", "endpoints": endpoints}
            sent = agent_api.post(f"/v1/agents/{agent_id}/report", json=report)
            assert sent.status_code == 200, sent.text
    log_in(page, ui, "viewer")
    page.goto(f"{ui.controller.url}/ui/#/topology")
    expect(page.locator("#topology td.cell[data-agent=probe-b]").first).to_be_visible()

    shot = page.screenshot(full_page=True)
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    kept = os.environ.get("DNSMESH_WEBUI_SCREENSHOT")
    if kept:  # the page down to its legend, in few colours: a small PNG
        legend = page.locator(".legend").bounding_box()
        assert legend is not None
        height = int(legend["y"] + legend["height"] + 16)
        picture = image.crop((0, 0, image.width, height))
        picture.convert("P", palette=Image.Palette.ADAPTIVE).save(kept, optimize=True)

    def colour(agent_id: str, address: str) -> tuple[int, int, int]:
        cell = page.locator(f"td.cell[data-agent={agent_id}][data-address='{address}']")
        box = cell.bounding_box()
        assert box is not None
        # A few pixels in from the corner: the cell's fill, clear of its text and border.
        pixel = image.getpixel((int(box["x"] + 5), int(box["y"] + 5)))
        assert isinstance(pixel, tuple)
        return int(pixel[0]), int(pixel[1]), int(pixel[2])

    fast = colour("probe-a", "127.0.10.1")
    assert fast[1] > 150 and fast[1] > fast[0] + 80 and fast[1] > fast[2] + 80, fast  # green
    slowish = colour("probe-a", "127.0.10.2")  # 110 ms of the 200 that are red: amber
    assert slowish[0] > 150 and slowish[1] > 100 and slowish[2] < 80, slowish
    ejected = colour("probe-a", "127.0.20.1")
    assert ejected[0] > 180 and ejected[1] < 80 and ejected[2] < 80, ejected  # red
    unprobed = colour("probe-b", "127.0.20.1")
    assert max(unprobed) - min(unprobed) < 30 and min(unprobed) > 200, unprobed  # light grey

    # The same reports per address, with each agent's detail.
    page.click("header a[href='#/endpoints']")
    ejected_row = page.locator("tr[data-address='127.0.20.1']")
    expect(ejected_row.locator("[data-status]")).to_have_attribute("data-status", "failing")
    ejected_row.locator("button").click()
    expect(page.locator("table.reports")).to_contain_text("node-probe-a")


def test_the_policy_page_charts_served_against_intended_share(page: Page, ui: Mesh) -> None:
    endpoints = [{"address": "127.0.30.1", "weight": 3}, {"address": "127.0.30.2", "weight": 1}]
    ui.rest.put(policy_doc("split", endpoints))
    counts = [  # served 1:3, the weights 3:1: a drift of 0.5 over 400 answers, flagged
        {"policy": "split", "slice": "_default", "endpoint": "127.0.30.1", "answers": 100},
        {"policy": "split", "slice": "_default", "endpoint": "127.0.30.2", "answers": 300},
    ]
    with httpx.Client(
        base_url=ui.controller.url, headers={"Authorization": f"Bearer {ui.tokens['agent']}"}
    ) as agent_api:
        hello = {"node_name": "node-share", "revision": 0}
        assert agent_api.post("/v1/agents/share/ack", json=hello).status_code == 200
        sent = agent_api.post("/v1/agents/share/answers", json={"counts": counts})
        assert sent.status_code == 200, sent.text
    log_in(page, ui, "viewer")
    page.goto(f"{ui.controller.url}/ui/#/policies/split")
    expect(page.locator("#share-flagged")).to_contain_text("0.500 over 400 answers")

    def width(address: str, bar: str) -> float:
        box = page.locator(f"#share g[data-address='{address}'] rect.{bar}").bounding_box()
        assert box is not None
        return float(box["width"])

    assert width("127.0.30.1", "intended") == pytest.approx(3 * width("127.0.30.2", "intended"))
    assert width("127.0.30.2", "served") == pytest.approx(3 * width("127.0.30.1", "served"))
    assert width("127.0.30.1", "intended") == pytest.approx(width("127.0.30.2", "served"))


def test_the_pages_show_drains_and_the_rollout(page: Page, ui: Mesh) -> None:
    """An endpoint drained by an operator shows its admin state and who drained it, and a
    canary policy its rollout's group, share, step and state, following each revision."""
    hosts = [{"address": "127.0.60.1", "weight": 1}, {"address": "127.0.60.2", "weight": 1}]
    ui.rest.put(policy_doc("drained", hosts))
    drained = ui.rest.http.post("/v1/endpoints/127.0.60.1/drain", json={"policy": "drained"})
    assert drained.status_code == 201, drained.text
    canary = policy_doc(
        "canary",
        [
            {"address": "127.0.61.1", "weight": 1, "group": "v1"},
            {"address": "127.0.61.2", "weight": 1, "group": "v2"},
        ],
        canary={"group": "v2", "steps": [10, 50, 100], "interval": "1h"},
    )
    ui.rest.put(canary)
    try:
        log_in(page, ui, "viewer")
        page.click("header a[href='#/endpoints']")
        row = page.locator("tr[data-address='127.0.60.1']")
        expect(row.locator("[data-admin-state]")).to_have_attribute("data-admin-state", "drained")
        expect(row.locator(".drain")).to_contain_text("drained in drained by admin")
        other = page.locator("tr[data-address='127.0.60.2']")
        expect(other.locator("[data-admin-state]")).to_have_attribute("data-admin-state", "up")

        page.goto(f"{ui.controller.url}/ui/#/policies/canary")
        expect(page.locator("#rollout-state")).to_have_text("progressing")  # the engine's round
        expect(page.locator("#rollout-group")).to_have_text("v2")
        expect(page.locator("#rollout-share")).to_have_text("10%")
        expect(page.locator("#rollout-step")).to_have_text("1 of 3")
        expect(page.locator("#rollout-reason")).to_contain_text("started: policy created")
        # another client's command is a revision: the page follows it
        assert ui.rest.http.post("/v1/policies/canary/rollout/abort").status_code == 200
        expect(page.locator("#rollout-state")).to_have_text("aborted")
        expect(page.locator("#rollout-share")).to_have_text("0%")
        expect(page.locator("#rollout-reason")).to_contain_text("abort by admin")
        page.goto(f"{ui.controller.url}/ui/#/policies/db")
        expect(page.locator("#policy-yaml")).to_be_visible()
        expect(page.locator("#rollout")).to_have_count(0)  # no canary, no rollout section
    finally:
        ui.rest.http.delete("/v1/endpoints/127.0.60.1/drain?policy=drained")
        ui.rest.http.delete("/v1/policies/drained")
        ui.rest.http.delete("/v1/policies/canary")
