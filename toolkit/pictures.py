"""What the tests of the pages check on every state, and the pictures they take of it.

Every state a page test reaches is checked with axe-core (no serious or critical accessibility
violation) and with the keyboard alone (Tab reaches every link, button and field, each with a
visible focus ring). With PICTURES=1 (`make pictures`) the tests also photograph the states into
steps/NN_*/pictures/, for the step's README; without it they check every state and write nothing.
A picture shows no focus ring (the focus leaves the page before each shot), and one that shows two
pages side by side shows them at TWO_PAGES_WIDTH, so that it stays under 1,000 pixels wide
(tests/test_pictures.py).
"""

import io
import os

from PIL import Image
from playwright.sync_api import expect

from toolkit.launcher import ROOT

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
PICTURES = os.environ.get("PICTURES") == "1"
MARGIN = 12  # pixels of white around a picture, and between its parts
TWO_PAGES_WIDTH = 480  # pixels: the viewport of each page a picture shows beside another
FOCUSABLE = "a[href], button, input:not([type=hidden]), select, textarea"
# The viewport of each page in a film of two chat pages side by side: the page's main part (the
# room, the connection, the message box) is then about 476 pixels wide, and the film under 1,000.
FILM_VIEWPORT = {"width": 716, "height": 720}


# --- what every state is checked for ---


def accessibility_problems(page) -> list[str]:
    """The serious and critical violations axe-core finds in the page as it is now."""
    if not page.evaluate("typeof axe === 'object'"):
        page.add_script_tag(path=AXE)
    return page.evaluate("""async () => {
        const found = await axe.run({ resultTypes: ["violations"] });
        return found.violations
            .filter((problem) => ["serious", "critical"].includes(problem.impact))
            .map((problem) => `${problem.impact} ${problem.id}: ${problem.help}, at `
                + problem.nodes.map((node) => node.target.join(" ")).join(", "));
    }""")


def check_accessibility(page) -> None:
    problems = accessibility_problems(page)
    assert not problems, f"axe-core on {page.url}:\n" + "\n".join(problems)


def check_keyboard(page) -> None:
    """Tab reaches every link, button and field on screen, and each shows a focus ring."""
    controls = page.locator(FOCUSABLE).filter(visible=True)
    for _ in range(2 * controls.count() + 2):  # round the page once, from wherever it starts
        page.keyboard.press("Tab")
        ring, unreached = page.evaluate(
            """(selector) => {
                const focused = document.activeElement;
                focused.dataset.reached = "";
                const style = getComputedStyle(focused);
                const ring = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2;
                const shown = { visibilityProperty: true };
                const unreached = [...document.querySelectorAll(selector)].filter(
                    (control) => !("reached" in control.dataset) && control.checkVisibility(shown));
                return [focused === document.body || ring, unreached.length];
            }""",
            FOCUSABLE,
        )
        assert ring, "the focused element shows no focus ring"
        if not unreached:
            return
    raise AssertionError("Tab never reached some controls")


def tab_to(page, control) -> None:
    """Press Tab until `control` has the focus, as someone without a mouse does."""
    for _ in range(20):
        if control.evaluate("element => element === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError("Tab never reached the control")


def type_into(page, field, text, then="Enter") -> None:
    tab_to(page, field)
    page.keyboard.insert_text(text)  # as typing does, in one go
    page.keyboard.press(then)


# --- pictures, taken only when asked for ---


def page_of(part):
    return getattr(part, "page", part)  # a locator has its page; a page is one


def side_by_side(*pages) -> None:
    """Give pages that a picture shows side by side the width that keeps it small."""
    for page in pages:
        page.set_viewport_size({"width": TWO_PAGES_WIDTH, "height": 720})


def shoot(*parts) -> Image.Image:
    """Screenshots of the parts (pages or locators), side by side, with white all round. The
    focus leaves each page first: a focus ring in a picture would say the focus matters."""
    for part in parts:
        page_of(part).evaluate("document.activeElement && document.activeElement.blur()")
    shots = [Image.open(io.BytesIO(part.screenshot(animations="disabled"))) for part in parts]
    width = sum(shot.width + MARGIN for shot in shots) + MARGIN
    whole = Image.new("RGB", (width, max(shot.height for shot in shots) + 2 * MARGIN), "white")
    left = MARGIN
    for shot in shots:
        whole.paste(shot, (left, MARGIN))
        left += shot.width + MARGIN
    return whole


def picture_path(step, name) -> str:
    folder = ROOT / "steps" / step / "pictures"
    folder.mkdir(exist_ok=True)
    return str(folder / name)


def save_picture(step, name, *parts) -> None:
    """steps/<step>/pictures/<name>: the parts side by side, in 64 colours (a small file)."""
    if PICTURES:
        shoot(*parts).quantize(64).save(picture_path(step, name), optimize=True)


class Film:
    """The frames of an animated picture."""

    def __init__(self):
        self.frames = []

    def shoot(self, *parts) -> None:
        if PICTURES:
            self.frames.append(shoot(*parts))

    def save(self, step, name, milliseconds_per_frame) -> None:
        """An animated GIF; every frame on a canvas the size of the largest one."""
        if PICTURES:
            size = max(f.width for f in self.frames), max(f.height for f in self.frames)
            frames = []
            for frame in self.frames:
                canvas = Image.new("RGB", size, "white")
                canvas.paste(frame)
                frames.append(canvas.quantize(64))
            first, *rest = frames
            first.save(
                picture_path(step, name),
                save_all=True,
                append_images=rest,
                duration=milliseconds_per_frame,
                loop=0,
                optimize=True,
            )


# --- a job's card, in steps 06 and 09 ---


def follow_to_done(card) -> Film:
    """Follow a job's card until its status line says Done, shooting a frame at each change.

    A screen reader reads a live region out when its text changes, not when the element is
    replaced by a new one: the line must be the same element all along.
    """
    status = card.get_by_role("status")
    status.evaluate("line => { line.stays = true; }")
    film = Film()
    while (shown := status.text_content()) != "Done":
        film.shoot(card)
        expect(status).not_to_have_text(shown)
    film.shoot(card)
    assert status.evaluate("line => line.stays"), "the status line was replaced"
    return film


# --- the chat pages of steps 07 to 09 ---


def side_by_side_in_a_film(*pages) -> None:
    for page in pages:
        page.set_viewport_size(FILM_VIEWPORT)


def message_box(page):
    """Steps 07 to 09: the message field (whose label starts each log's name, hence exact)."""
    return page.get_by_label("Message", exact=True)


def room_log(page, room):
    return page.get_by_role("log", name=f"Messages in {room}")


def messages_in(page, room="general"):
    return room_log(page, room).get_by_role("listitem")


def check_bad_sign_up_is_answered_on_the_form(page, server, password="correct horse"):
    page.goto(f"{server.url}/signup")
    check_accessibility(page)
    check_keyboard(page)
    type_into(page, page.get_by_label("Username"), "bob the builder", then="Tab")
    type_into(page, page.get_by_label("Password"), password)
    expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")
    check_accessibility(page)
