"""Exercise 08-01: one address opens at most SIGN_UPS accounts (here 3 an hour); then 429."""

import requests

from toolkit.people import PASSWORD, FromAddress, post_form, unique


def sign_up_from(server, address):
    """Sign up a new user from `address`: whether it worked (the chat page), else the status."""
    http = requests.Session()
    http.mount("http://", FromAddress(address))
    fields = {"username": unique("new"), "password": PASSWORD}
    answer = post_form(http, server, "/signup", "/signup", **fields)
    return "signed up" if answer.url == f"{server.url}/" else answer.status_code


def test_a_fourth_account_from_one_address_is_answered_429(serve):
    chat = serve("08_under_attack", SIGN_UPS="3 per hour")
    assert [sign_up_from(chat, "127.0.0.5") for _ in range(4)] == ["signed up"] * 3 + [429]
    assert sign_up_from(chat, "127.0.0.6") == "signed up"  # another address is not concerned
