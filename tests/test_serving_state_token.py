"""The signed continuation state: round trip, rotation of secrets, and refusal of anything this deployment did not
sign (forged, altered, another deployment's), of another version's state and of numbers the model cannot read."""
import base64
import hashlib
import hmac
import json
import logging

import numpy as np
import pytest

from serving.settings import Settings
from serving.state_token import NOT_OURS, PURPOSE, StateError, StateSigner, decode, encode, signer_for
from serving_helpers import assert_error, post_ok, shared_app

SECRET = b"this-deployment-secret-0123456789"
OLD = b"the-secret-before-rotation-98765"
OTHER = b"another-deployment-secret-abcdef"
WIDTH = 65


def row(values=None) -> np.ndarray:
    if values is not None:
        return np.asarray(values, np.float32)
    state = np.random.default_rng(0).standard_normal(WIDTH).astype(np.float32)
    state[-1] = 123.0  # the sampler's position
    return state


def refused(token, secrets=(SECRET,), reason=None, match=None) -> StateError:
    with pytest.raises(StateError, match=match) as caught:
        decode(token, "charlm", 3, WIDTH, secrets)
    if reason is not None:
        assert caught.value.reason == reason, caught.value
    return caught.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed_by_us(header, numbers: bytes) -> str:
    """A token of any header and bytes with a valid signature: what only the holder of SECRET could make."""
    signed = f"{b64(json.dumps(header).encode())}.{b64(numbers)}"
    return f"{signed}.{b64(hmac.new(SECRET, PURPOSE + signed.encode(), hashlib.sha256).digest())}"


def test_round_trip_keeps_every_bit_and_the_seed():
    state = row()
    token = encode("charlm", 3, -(2 ** 63), state, SECRET)
    assert token.count(".") == 2 and "=" not in token
    seed, back = decode(token, "charlm", 3, WIDTH, [SECRET])
    assert seed == -(2 ** 63) and back.dtype == np.float32 and np.array_equal(back, state)


@pytest.mark.parametrize("token", [
    "", "nonsense", "a.b", "a.b.c.d", "!!!.???.***", "..",
    # random bytes in the right shape: three base64url parts, the last as long as a real signature
    ".".join(b64(np.random.default_rng(1).bytes(n)) for n in (40, 4 * WIDTH, 32)),
])
def test_forged_states_are_refused(token):
    error = refused(token)
    assert error.reason in ("malformed", "signature")


def test_a_state_without_a_signature_as_before_signing_is_refused():
    header, numbers, _ = encode("charlm", 3, 1, row(), SECRET).split(".")
    refused(f"{header}.{numbers}", reason="malformed")


def test_one_flipped_bit_of_the_numbers_is_refused():
    header, numbers, signature = encode("charlm", 3, 1, row(), SECRET).split(".")
    raw = bytearray(unb64(numbers))
    raw[17] ^= 0x01  # one bit of one float
    error = refused(f"{header}.{b64(bytes(raw))}.{signature}", reason="signature")
    assert str(error) == NOT_OURS and "another deployment" in str(error)


@pytest.mark.parametrize("change", [{"seed": 2}, {"version": 4}, {"model": "other"}])
def test_an_edited_header_is_refused(change):
    header, numbers, signature = encode("charlm", 3, 1, row(), SECRET).split(".")
    fields = {**json.loads(unb64(header)), **change}
    edited = b64(json.dumps(fields, separators=(",", ":")).encode())
    refused(f"{edited}.{numbers}.{signature}", reason="signature")


def test_parts_of_two_states_cannot_be_spliced():
    a = encode("charlm", 3, 1, row(), SECRET).split(".")
    b = encode("charlm", 3, 1, row(np.zeros(WIDTH)), SECRET).split(".")
    refused(f"{a[0]}.{b[1]}.{a[2]}", reason="signature")
    refused(f"{a[0]}.{a[1]}.{a[2][:-2]}", reason="signature")  # a truncated signature


def test_another_deployments_state_is_refused():
    """Same model, same version, same numbers: only the secret differs."""
    error = refused(encode("charlm", 3, 1, row(), OTHER), reason="signature")
    assert "another deployment" in str(error)


def test_rotation_old_secret_second_still_verifies_and_a_removed_one_does_not():
    signed_before = encode("charlm", 3, 7, row(), OLD)
    rotated = StateSigner([SECRET, OLD])  # the new secret first: it signs; the old one still verifies
    seed, back = rotated.decode(signed_before, "charlm", 3, WIDTH)
    assert seed == 7 and np.array_equal(back, row())
    signed_after = rotated.encode("charlm", 3, 7, row())
    assert decode(signed_after, "charlm", 3, WIDTH, [SECRET]) and signed_after != signed_before
    refused(signed_after, secrets=(OLD,), reason="signature")  # signed with the first secret, not the old one
    # The old secret removed from the list: its states are refused.
    refused(signed_before, secrets=(SECRET,), reason="signature")


def test_a_state_of_another_version_names_both_versions():
    error = refused(encode("charlm", 1, 1, row(), SECRET), reason="model")
    assert "this state belongs to charlm version 1" in str(error)
    assert "the server now serves version 3" in str(error)
    error = refused(encode("other", 3, 1, row(), SECRET), reason="model")
    assert "belongs to other version 3; the server now serves charlm version 3" in str(error)


@pytest.mark.parametrize("numbers, reason, match", [
    (np.zeros(64), "width", "holds 64 numbers; charlm version 3 needs 65"),
    (np.zeros(66), "width", "holds 66 numbers"),
    (np.full(WIDTH, np.nan), "numbers", "NaN or infinite"),
    (np.r_[np.zeros(30), np.inf, np.zeros(34)], "numbers", "NaN or infinite"),
    (np.r_[np.zeros(30), -np.inf, np.zeros(34)], "numbers", "NaN or infinite"),
    (np.r_[np.zeros(64), np.inf], "numbers", "NaN or infinite"),
    (np.r_[np.zeros(64), -1.0], "numbers", "position"),
    (np.r_[np.zeros(64), 2.5], "numbers", "position"),
    (np.r_[np.zeros(64), 2.0 ** 30], "numbers", "past 16,777,216 characters"),
    (np.r_[np.full(64, 3e38), 100.0], "numbers", "3e\\+38 is beyond what the model reaches in 100 characters"),
    (np.r_[np.zeros(10), 1.5, np.zeros(53), 0.0], "numbers", "1.5 is beyond"),
    (np.r_[np.zeros(10), -40.0, np.zeros(53), 39.0], "numbers", "40 is beyond"),
])
def test_validly_signed_numbers_the_model_cannot_read_are_refused(numbers, reason, match):
    """Not possible unless our own secret signed them; decode refuses them all the same."""
    refused(encode("charlm", 3, 1, row(numbers), SECRET), reason=reason, match=match)


def test_the_largest_numbers_the_model_can_reach_are_accepted():
    """|h| <= 1 at any position and |c| <= position: the bounds themselves are states the model may produce."""
    for numbers in (np.r_[np.ones(64), 0.0], np.r_[-np.ones(64), 0.0], np.r_[np.full(64, -39.0), 39.0],
                    np.r_[np.zeros(64), 2.0 ** 24]):
        assert np.array_equal(decode(encode("charlm", 3, 1, row(numbers), SECRET), "charlm", 3, WIDTH, [SECRET])[1],
                              numbers.astype(np.float32))


def test_a_validly_signed_state_of_odd_bytes_is_refused():
    header = {"model": "charlm", "version": 3, "seed": 1}
    refused(signed_by_us(header, bytes(6)), reason="width", match="6 bytes")
    other_signature = encode("charlm", 3, 1, row(), SECRET).split(".")[2]
    refused(signed_by_us(header, bytes(6)).rsplit(".", 1)[0] + "." + other_signature, reason="signature")


@pytest.mark.parametrize("header", [{"model": "charlm", "version": "3", "seed": 1},
                                    {"model": "charlm", "version": 3, "seed": 2 ** 64},
                                    {"model": "charlm", "version": True, "seed": 1}, {"model": "charlm"}, [1, 2]])
def test_a_validly_signed_odd_header_is_refused_not_a_500(header):
    refused(signed_by_us(header, row().astype("<f4").tobytes()), reason="malformed")


def test_settings_secrets_first_signs_all_verify():
    settings = Settings(state_secrets=f" {SECRET.decode()} , {OLD.decode()} ,")
    signer = signer_for(settings)
    assert signer.secrets == (SECRET, OLD)
    assert decode(signer.encode("charlm", 3, 1, row()), "charlm", 3, WIDTH, [SECRET])


def test_a_short_secret_stops_the_gateway_without_showing_it():
    with pytest.raises(ValueError, match="CHARLM_STATE_SECRETS .*secret number 2 .*16 bytes") as caught:
        signer_for(Settings(state_secrets=f"{SECRET.decode()},tooshort"))
    assert "tooshort" not in str(caught.value)


def test_without_a_secret_one_random_secret_per_process_and_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="serving.state_token"):
        first, second = signer_for(Settings()), signer_for(Settings())
    assert "CHARLM_STATE_SECRETS is not set" in caplog.text and "another replica" in caplog.text
    assert len(first.secrets) == 1 and len(first.secrets[0]) == 32 and first.secrets == second.secrets
    token = first.encode("charlm", 3, 1, row())
    assert second.decode(token, "charlm", 3, WIDTH)[0] == 1
    refused(token, secrets=(SECRET,), reason="signature")  # a configured deployment does not take it


# --- through the gateway: deployments with their own secrets, and a rotation ------------------------------------------
@pytest.fixture(scope="module")
def deployments(exported_model):
    """The session's model behind three gateways: `before` signs with OLD; `rotated` has SECRET first and OLD second
    (a rotation in progress); `after` has SECRET only (OLD removed). Plus the session's gateway, which has no
    configured secret (a random one of this process): a deployment of its own."""
    from serving.app import create_app

    apps = {name: create_app({"model_dir": exported_model[0], "state_secrets": ",".join(s.decode() for s in secrets)})
            for name, secrets in (("before", [OLD]), ("rotated", [SECRET, OLD]), ("after", [SECRET]))}
    apps["unconfigured"] = shared_app(exported_model[0])
    return {name: app.test_client() for name, app in apps.items()}


def generated(client, **body):
    return post_ok(client, "/v1/generate", **{"prompt": "ROMEO:\n", "max_chars": 30, "seed": 5, **body})


def continued(client, state):
    return client.post("/v1/generate", json={"prompt": "", "state": state, "max_chars": 40})


def test_a_rotated_deployment_continues_a_state_signed_before_the_rotation(deployments):
    state = generated(deployments["before"])["state"]
    own = continued(deployments["before"], state)
    rotated = continued(deployments["rotated"], state)
    assert own.status_code == rotated.status_code == 200, rotated.get_data(as_text=True)
    # The numbers were read, not just accepted: the same text goes on, with the seed the state kept.
    assert rotated.get_json()["text"] == own.get_json()["text"] and rotated.get_json()["seed"] == 5
    # What the rotated deployment signs verifies once the old secret is gone, and not where only the old one is.
    new_state = rotated.get_json()["state"]
    assert continued(deployments["after"], new_state).status_code == 200
    assert_invalid_state(continued(deployments["before"], new_state), "not signed by this deployment")


def test_a_state_signed_with_a_removed_secret_is_refused(deployments):
    state = generated(deployments["before"])["state"]
    assert_invalid_state(continued(deployments["after"], state), "not signed by this deployment")
    score = deployments["before"].post("/v1/score", json={"text": "ROMEO"}).get_json()["state"]
    assert_invalid_state(deployments["after"].post("/v1/score", json={"text": "O", "state": score}),
                         "not signed by this deployment")


def test_another_deployments_state_is_refused_both_ways(deployments):
    ours, theirs = generated(deployments["before"])["state"], generated(deployments["unconfigured"])["state"]
    assert_invalid_state(continued(deployments["unconfigured"], ours), "another deployment")
    assert_invalid_state(continued(deployments["before"], theirs), "another deployment")
    assert continued(deployments["unconfigured"], theirs).status_code == 200


def test_forged_and_altered_states_are_400s_on_every_route_that_takes_one(deployments):
    client = deployments["before"]
    good = generated(client)["state"]
    header, numbers, signature = good.split(".")
    raw = bytearray(unb64(numbers))
    raw[0] ^= 0x80
    forged = ".".join(b64(np.random.default_rng(2).bytes(n)) for n in (40, len(raw), 32))
    for bad in (forged, f"{header}.{b64(bytes(raw))}.{signature}", f"{header}.{numbers}", good[:-1]):
        assert_invalid_state(continued(client, bad))
        assert_invalid_state(client.post("/v1/score", json={"text": "O", "state": bad}))
        assert_invalid_state(client.post("/v1/activations", json={"text": "O", "state": bad}))


def test_a_validly_signed_state_of_another_version_or_width_or_numbers_is_a_400_saying_so(deployments):
    client = deployments["before"]
    seed, state = decode(generated(client)["state"], "charlm", 1, 2 * 32 + 1, [OLD])
    error = assert_invalid_state(continued(client, encode("charlm", 7, seed, state, OLD)))
    assert "this state belongs to charlm version 7; the server now serves version 1;" in error["message"]
    assert_invalid_state(continued(client, encode("charlm", 1, seed, state[:-1], OLD)), "needs 65 numbers")
    state[3] = np.inf
    assert_invalid_state(continued(client, encode("charlm", 1, seed, state, OLD)), "NaN or infinite")


def assert_invalid_state(response, words: str = "") -> dict:
    error = assert_error(response, 400, "state", "invalid_state")
    assert words in error["message"], error["message"]
    return error
