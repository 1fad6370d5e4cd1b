"""The forms (Flask-WTF): each carries a CSRF token and says what is wrong, field by field."""

from pathlib import Path

from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length, Regexp, ValidationError

# The passwords guessers try first (of 8 characters or more), one a line, in lower case.
COMMON_PASSWORDS = set((Path(__file__).parent / "common_passwords.txt").read_text().split())


def strip(text):
    return text.strip() if text else text


def lower(text):
    return text.lower() if text else text


class SignInForm(FlaskForm):
    username = StringField(
        "Username",
        filters=[strip],
        validators=[
            DataRequired("Type your username."),
            Length(max=32, message="A username has at most 32 characters."),
        ],
    )
    password = PasswordField(
        "Password",
        validators=[
            DataRequired("Type your password."),
            Length(max=100, message="A password has at most 100 characters."),
        ],
    )


class SignUpForm(SignInForm):
    username = StringField(
        "Username",
        filters=[strip],
        validators=[
            DataRequired("Choose a username."),
            Regexp(
                r"[A-Za-z0-9._-]{1,32}\Z",
                message="A username has 1 to 32 letters, digits, '.', '_' or '-'.",
            ),
        ],
    )
    password = PasswordField(
        "Password",
        validators=[
            DataRequired("Choose a password."),
            Length(8, 100, message="A password has 8 to 100 characters."),
        ],
    )

    def validate_password(self, field):  # WTForms calls validate_<field> after the validators
        password = field.data.lower()
        if password in COMMON_PASSWORDS or password == (self.username.data or "").lower():
            raise ValidationError("That password is too easy to guess: choose another.")


class RoomForm(FlaskForm):
    name = StringField(
        "Room name",
        filters=[strip, lower],
        validators=[
            DataRequired("Name the room."),
            Regexp(
                r"[a-z0-9_-]{1,32}\Z",
                message="A room name has 1 to 32 letters, digits, '_' or '-'.",
            ),
        ],
    )


class MemberForm(FlaskForm):
    username = StringField(
        "Username",
        filters=[strip],
        validators=[
            DataRequired("Type a username."),
            Length(max=32, message="A username has at most 32 characters."),
        ],
    )
