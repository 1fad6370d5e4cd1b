"""One test that catches a missing password check: a sign-up with a password from the list of
common ones is refused, and no account is made."""

from toolkit.people import post_form, rows, session, unique


def test_a_sign_up_with_a_common_password_is_refused(in_process):
    chat = in_process("08_under_attack")
    name = unique("easy")
    answer = post_form(
        session(chat), chat, "/signup", "/signup", username=name, password="password"
    )
    assert answer.status_code == 400
    assert "too easy to guess" in answer.text
    assert not rows(chat, "SELECT 1 FROM users WHERE name = ?", name)
