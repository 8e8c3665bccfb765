"""The web pages in a real browser: Debian's Chromium driven by Playwright.

Two browser users chat through a real node process; the dashboard shows a
three-node cluster. Screenshots go to ``artifacts/screenshots/`` (kept by CI).
Without Chromium at /usr/bin/chromium these tests skip, saying so; with
CI=true they must run.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import trio

import timpy
from tests.conftest import PASSWORD, NodeProcess

CHROMIUM = Path(os.environ.get("TIMPY_CHROMIUM", "/usr/bin/chromium"))
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set TIMPY_CHROMIUM)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # trio-asyncio (which hosts ICE in the nodes tested in this process) makes asyncio's
    # new_event_loop give its own loop unless a policy was set; Playwright's sync API needs a plain one
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def test_two_browser_users_chat_through_a_real_node(browser, tmp_path):
    from playwright.sync_api import expect

    node = NodeProcess(tmp_path).start()
    try:
        # Carol sent bob 30 messages, which his phone received: the browser
        # (a new device) gets them from history, scrolling back.
        async def history_for_bob() -> None:
            await timpy.register(node.tcp_url, "carol", PASSWORD)
            await timpy.register(node.tcp_url, "bob", PASSWORD)
            async with timpy.connect(node.tcp_url, "carol", PASSWORD) as carol:
                for i in range(30):
                    await carol.send("bob", f"old {i}")
            async with timpy.connect(node.tcp_url, "bob", PASSWORD, device="phone") as phone:
                for _ in range(30):
                    await phone.next_message(timeout=5)
                await trio.sleep(0.5)  # its acknowledgements reach the node

        trio.run(history_for_bob)
        chat = f"http://{node.info['admin']}/chat/"
        alice, bob = browser.new_page(), browser.new_page()
        for page in (alice, bob):
            page.goto(chat)
            expect(page.locator("#status")).to_contain_text("connected to node")
        alice.fill("#name", "alice")
        alice.fill("#password", PASSWORD)
        alice.click("button[data-op=register]")
        expect(alice.locator("#me")).to_have_text("as alice")
        bob.fill("#name", "bob")
        bob.fill("#password", "wrong-password")
        bob.click("button[data-op=login]")
        expect(bob.locator("#auth-error")).to_contain_text("wrong user name or password")
        bob.fill("#password", PASSWORD)
        bob.click("button[data-op=login]")
        expect(bob.locator("#me")).to_have_text("as bob")

        alice.fill("#new-peer", "bob")
        alice.click("#new-chat button")
        alice.fill("#text", "hello bob, from a browser")
        alice.click("#send")
        expect(alice.locator("#messages .msg.mine")).to_have_text(["alice #1hello bob, from a browser"])
        # Bob gets it live; the conversation appears in his list.
        bob.locator("#contacts li", has_text="alice").click()
        expect(bob.locator("#messages")).to_contain_text("hello bob, from a browser")
        bob.fill("#text", "hi alice!")
        bob.click("#send")
        expect(alice.locator("#messages")).to_contain_text("hi alice!")
        alice.screenshot(path=str(SHOTS / "chat-alice.png"))

        # A group: alice creates it with bob; both talk in it.
        alice.fill("#group-name", "Weekend trip")
        alice.fill("#group-members", "bob")
        alice.click("#new-group button")
        expect(alice.locator("#peer-title")).to_have_text("# Weekend trip")
        expect(alice.locator("#group-line")).to_contain_text("alice, bob")
        alice.fill("#text", "group hello")
        alice.click("#send")
        expect(alice.locator("#messages .msg.mine")).to_have_count(1)
        bob.locator("#contacts li", has_text="Weekend trip").click()
        expect(bob.locator("#messages")).to_contain_text("group hello")
        bob.fill("#text", "count me in")
        bob.click("#send")
        expect(alice.locator("#messages")).to_contain_text("count me in")
        alice.screenshot(path=str(SHOTS / "chat-group.png"))

        # Scroll-back: 20 newest first, then the older ones on request.
        bob.fill("#new-peer", "carol")
        bob.click("#new-chat button")
        expect(bob.locator("#messages .msg")).to_have_count(20)
        bob.click("#older")
        expect(bob.locator("#messages .msg")).to_have_count(30)
        expect(bob.locator("#messages .msg").first).to_contain_text("old 0")
        bob.screenshot(path=str(SHOTS / "chat-bob-history.png"))
        # A message to nobody: a clear error on the page, nothing sent.
        bob.fill("#new-peer", "nobody")
        bob.click("#new-chat button")
        bob.fill("#text", "anyone?")
        bob.click("#send")
        expect(bob.locator("#chat-error")).to_contain_text("no such user")
    finally:
        node.stop()


def test_browser_users_make_friends_see_presence_typing_and_read_receipts(browser, tmp_path):
    from playwright.sync_api import expect

    node = NodeProcess(tmp_path).start()
    try:
        chat = f"http://{node.info['admin']}/chat/"
        pages = {}
        for name in ("dora", "ezra"):
            page = browser.new_page()
            page.goto(chat)
            expect(page.locator("#status")).to_contain_text("connected to node")
            page.fill("#name", name)
            page.fill("#password", PASSWORD)
            page.click("button[data-op=register]")
            expect(page.locator("#me")).to_have_text(f"as {name}")
            pages[name] = page
        dora, ezra = pages["dora"], pages["ezra"]
        # A friend request, accepted: each sees the other online.
        dora.fill("#friend-name", "ezra")
        dora.click("#add-friend button")
        expect(ezra.locator("#requests")).to_contain_text("dora asks to be your friend")
        ezra.click("#requests button[data-user=dora]")
        expect(ezra.locator("#friends li[data-user=dora] .dot.online")).to_have_count(1)
        expect(dora.locator("#friends li[data-user=ezra] .dot.online")).to_have_count(1)
        # A status change reaches the friend live.
        ezra.select_option("#my-status", "busy")
        ezra.fill("#my-text", "on a call")
        ezra.click("#status-form button")
        expect(dora.locator("#friends li[data-user=ezra] .dot.busy")).to_have_count(1)
        expect(dora.locator("#friends")).to_contain_text("on a call")
        # Typing, then a message that ezra reads: dora sees it marked read.
        dora.locator("#friends li[data-user=ezra]").click()
        ezra.locator("#friends li[data-user=dora]").click()
        dora.type("#text", "are you free")
        expect(ezra.locator("#typing")).to_contain_text("dora is typing")
        dora.click("#send")
        expect(ezra.locator("#messages")).to_contain_text("are you free")
        expect(dora.locator("#messages .msg.mine .read")).to_have_count(1)
        dora.screenshot(path=str(SHOTS / "chat-friends-read.png"))
        # Ezra goes away: dora sees him offline.
        ezra.close()
        expect(dora.locator("#friends li[data-user=ezra] .dot.offline")).to_have_count(1)
    finally:
        node.stop()


def test_browser_users_react_to_a_message_and_see_it_live(browser, tmp_path):
    from playwright.sync_api import expect

    node = NodeProcess(tmp_path).start()
    try:
        chat = f"http://{node.info['admin']}/chat/"
        pages = {}
        for name in ("fay", "gil"):
            page = browser.new_page()
            page.goto(chat)
            expect(page.locator("#status")).to_contain_text("connected to node")
            page.fill("#name", name)
            page.fill("#password", PASSWORD)
            page.click("button[data-op=register]")
            expect(page.locator("#me")).to_have_text(f"as {name}")
            pages[name] = page
        fay, gil = pages["fay"], pages["gil"]
        fay.fill("#new-peer", "gil")
        fay.click("#new-chat button")
        fay.fill("#text", "lunch at noon?")
        fay.click("#send")
        gil.locator("#contacts li", has_text="fay").click()
        expect(gil.locator("#messages")).to_contain_text("lunch at noon?")
        # Gil reacts; fay sees it live under her message, and who it was.
        gil.click(".reactions[data-seq='1'] .add-reaction[data-key='👍']")
        chip = ".reactions[data-seq='1'] .reaction[data-key='👍']"
        expect(gil.locator(chip)).to_have_text("👍 1")
        expect(fay.locator(chip)).to_have_text("👍 1")
        expect(fay.locator(chip)).to_have_attribute("title", "gil")
        # Fay adds hers to the same reaction, then gil takes his back.
        fay.click(chip)
        expect(gil.locator(chip)).to_have_text("👍 2")
        gil.click(chip)
        expect(fay.locator(chip)).to_have_text("👍 1")
        expect(fay.locator(chip)).to_have_attribute("title", "fay")
        fay.screenshot(path=str(SHOTS / "chat-reactions.png"))
        # A new page (another device) gets the reactions from history.
        again = browser.new_page()
        again.goto(chat)
        expect(again.locator("#status")).to_contain_text("connected to node")
        again.fill("#name", "gil")
        again.fill("#password", PASSWORD)
        again.click("button[data-op=login]")
        again.fill("#new-peer", "fay")
        again.click("#new-chat button")
        expect(again.locator(chip)).to_have_text("👍 1")
        expect(again.locator(chip)).to_have_attribute("title", "fay")
    finally:
        node.stop()


def test_the_dashboard_shows_a_three_node_cluster_and_runs_operations(browser, tmp_path):
    from playwright.sync_api import expect

    from tests.support.cluster_processes import start_cluster, wait_members

    nodes, _ = start_cluster(tmp_path)
    try:
        for n in nodes:
            trio.run(wait_members, n.info["peer"], tmp_path / "cluster.key", 3)
        trio.run(timpy.register, nodes[1].tcp_url, "dave", PASSWORD)
        token = (tmp_path / "n0" / "data" / "admin.token").read_text().strip()
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"http://{nodes[0].info['admin']}/")
        page.fill("#token", "not-the-token")
        page.click("#token-form button")
        expect(page.locator("#token-error")).to_contain_text("admin token")
        page.fill("#token", token)
        page.click("#token-form button")
        rows = page.locator("#members tbody tr")
        expect(rows).to_have_count(3)
        expect(page.locator("#members tbody tr[data-state=alive]")).to_have_count(3)
        for n in nodes:
            expect(page.locator("#members")).to_contain_text(n.info["node_id"])
        expect(page.locator("#storage")).to_contain_text("embedded")
        # the path column: loopback peers reach each other over direct TCP (NAT paths: tests/e2e/test_nat.py)
        expect(page.locator("#members")).to_contain_text("direct TCP")
        page.fill("#user-name", "dave")
        page.click("#user-form button[data-op=disable]")
        expect(page.locator("#op-result")).to_contain_text('"disabled": true')
        page.click("#user-form button[data-op=lookup]")
        expect(page.locator("#op-result")).to_contain_text('"name": "dave"')
        page.wait_for_timeout(2500)  # a few refreshes: the chart has points
        page.screenshot(path=str(SHOTS / "dashboard-three-nodes.png"), full_page=True)
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.stop()


def _png(width: int = 8, height: int = 8) -> bytes:
    """A small valid PNG (red squares), made without an imaging library."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_the_web_chat_sends_and_shows_an_image(browser, tmp_path):
    from playwright.sync_api import expect

    node = NodeProcess(tmp_path).start()
    try:
        async def accounts() -> None:
            await timpy.register(node.tcp_url, "amy", PASSWORD)
            await timpy.register(node.tcp_url, "bo", PASSWORD)

        trio.run(accounts)
        image = tmp_path / "red.png"
        image.write_bytes(_png())
        chat = f"http://{node.info['admin']}/chat/"
        amy, bo = browser.new_page(), browser.new_page()
        for page, name in ((amy, "amy"), (bo, "bo")):
            page.goto(chat)
            expect(page.locator("#status")).to_contain_text("connected to node")
            page.fill("#name", name)
            page.fill("#password", PASSWORD)
            page.click("button[data-op=login]")
            expect(page.locator("#me")).to_have_text(f"as {name}")
        amy.fill("#new-peer", "bo")
        amy.click("#new-chat button")
        amy.set_input_files("#file", str(image))
        expect(amy.locator("#messages img")).to_have_count(1)
        bo.locator("#contacts li", has_text="amy").click()
        img = bo.locator("#messages img")
        expect(img).to_have_count(1)
        expect(img).to_have_attribute("alt", "red.png")
        bo.wait_for_function("() => { const i = document.querySelector('#messages img'); return i && i.naturalWidth === 8; }")
        bo.screenshot(path=str(SHOTS / "chat-image.png"))

        async def check() -> None:  # the same file, through the client library
            async with timpy.connect(node.tcp_url, "bo", PASSWORD, device="phone") as phone:
                m = (await phone.history("amy")).messages[-1]
                assert m.kind == timpy.KIND_FILE
                assert await phone.download(timpy.FileRef.unpack(m.body)) == image.read_bytes()

        trio.run(check)
    finally:
        node.stop()


def test_the_web_chat_searches_jumps_to_a_result_and_replies_in_a_thread(browser, tmp_path):
    from playwright.sync_api import expect

    node = NodeProcess(tmp_path).start()
    try:
        # An old message, 30 newer ones after it: a click on the search result
        # loads older pages until it is there.
        async def old_messages() -> None:
            await timpy.register(node.tcp_url, "pam", PASSWORD)
            await timpy.register(node.tcp_url, "ray", PASSWORD)
            async with timpy.connect(node.tcp_url, "pam", PASSWORD) as pam:
                await pam.send("ray", "the blue kayak is ready")
                for i in range(30):
                    await pam.send("ray", f"filler {i}")

        trio.run(old_messages)
        chat = f"http://{node.info['admin']}/chat/"
        pam, ray = browser.new_page(), browser.new_page()
        for page, name in ((pam, "pam"), (ray, "ray")):
            page.goto(chat)
            expect(page.locator("#status")).to_contain_text("connected to node")
            page.fill("#name", name)
            page.fill("#password", PASSWORD)
            page.click("button[data-op=login]")
            expect(page.locator("#me")).to_have_text(f"as {name}")
        ray.fill("#search-text", "kayak")
        ray.click("#search-form button")
        expect(ray.locator("#search-count")).to_have_text("1 found")
        result = ray.locator("#search-results li")
        expect(result).to_have_text("pam #1: the blue kayak is ready")
        result.click()
        lit = ray.locator("#messages .msg.highlight")
        expect(lit).to_have_count(1)
        expect(lit).to_have_attribute("data-seq", "1")
        expect(lit).to_contain_text("the blue kayak is ready")
        expect(lit).to_be_in_viewport()
        # Ray opens the message's thread and replies there; pam sees the count live, opens it, answers.
        pam.locator("#contacts li", has_text="ray").click()
        expect(pam.locator("#messages")).to_contain_text("filler 29")
        pam.click("#older")  # back to the first message
        expect(pam.locator("#messages .msg[data-seq='1']")).to_have_count(1)
        ray.click(".reactions[data-seq='1'] .thread-link")
        expect(ray.locator("#thread")).to_be_visible()
        expect(ray.locator("#thread-root")).to_have_text("under #1")
        ray.fill("#thread-text", "bring the paddles")
        ray.click("#thread-send")
        expect(ray.locator("#thread-messages")).to_contain_text("bring the paddles")
        expect(ray.locator("#messages")).not_to_contain_text("bring the paddles")  # not in the conversation itself
        link = pam.locator(".reactions[data-seq='1'] .thread-link")
        expect(link).to_have_text("💬 1 in thread")
        link.click()
        expect(pam.locator("#thread-messages")).to_contain_text("bring the paddles")
        pam.fill("#thread-text", "two paddles, got it")
        pam.click("#thread-send")
        expect(ray.locator("#thread-messages .msg")).to_have_count(2)
        expect(ray.locator("#thread-messages")).to_contain_text("two paddles, got it")
        ray.screenshot(path=str(SHOTS / "chat-thread.png"))
        # A word said only in the thread: the result names the thread and opens it, highlighted.
        pam.click("#thread-close")
        expect(pam.locator("#thread")).to_be_hidden()
        pam.fill("#search-text", "paddles")
        pam.click("#search-form button")
        expect(pam.locator("#search-count")).to_have_text("2 found")
        hit = pam.locator("#search-results li", has_text="bring the paddles")
        expect(hit).to_have_text("ray (thread) #1: bring the paddles")
        hit.click()
        expect(pam.locator("#thread")).to_be_visible()
        expect(pam.locator("#thread-messages .msg.highlight")).to_contain_text("bring the paddles")
        pam.screenshot(path=str(SHOTS / "chat-search.png"))

        async def check() -> None:  # the same thread, through the client library
            async with timpy.connect(node.tcp_url, "pam", PASSWORD, device="phone") as phone:
                [info] = await phone.threads([1], peer="ray")
                page = await phone.history(conversation=info.thread)
                assert [m.body for m in page.messages] == [b"bring the paddles", b"two paddles, got it"]

        trio.run(check)
    finally:
        node.stop()
