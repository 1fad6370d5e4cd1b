"""Exercise 02-01: a third widget, the load average, on every page and in every push."""

import os
import re
import urllib.request

import pytest
from websockets.sync.client import connect

# The widget's element, whatever the order of its attributes: its tag, the attributes, its text.
WIDGET = re.compile(r'<(\w+)([^>]*\bid="load-average"[^>]*)>\s*([^<]*?)\s*</\1>')


def load_average_in(html):
    found = WIDGET.search(html)
    assert found, 'no element with id="load-average"'
    return found


@pytest.mark.parametrize("path", ["/", "/htmx2", "/htmx1"])
def test_each_page_shows_the_load_average_under_its_label(serve, path):
    server = serve("02_clock")
    html = urllib.request.urlopen(server.url + path, timeout=5).read().decode()
    _tag, attributes, text = load_average_in(html).groups()
    assert re.fullmatch(r"\d+\.\d\d", text), f"{text!r} is not a load average such as 0.52"
    label = re.search(r'aria-labelledby="([^"]+)"', attributes)
    assert label, "the widget is not labelled"
    assert re.search(rf'id="{label[1]}"[^>]*>\s*Load average', html), "no 'Load average' label"


def test_each_push_carries_the_load_average_out_of_band(serve):
    server = serve("02_clock", CLOCK_INTERVAL=0.2)
    with connect(f"{server.ws_url}/clock") as ws:
        for _ in range(2):
            _tag, attributes, text = load_average_in(ws.recv(timeout=5)).groups()
            assert 'hx-swap-oob="true"' in attributes
            assert abs(float(text) - os.getloadavg()[0]) < 1
