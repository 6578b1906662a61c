"""The one cattrs converter, and the alert parser built on it.

`make_converter()` is the only place structure hooks are registered. It serves two masters:

* the config (`tvbridge.config`): unknown keys are errors, so a typo stops the start;
* the alert (Dhan's TradingView JSON): TradingView sends every value as a string, Dhan's panel and traders add
  keys of their own, so values are accepted as strings or natural JSON types, unknown keys are collected as
  `warnings`, and every problem in the alert is reported at once with its path (`order_legs[0].quantity`).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError
from cattrs.gen import make_dict_structure_fn, override

from tvbridge import config as config_module
from tvbridge.brackets import bracket_problems
from tvbridge.errors import BadRequestError, InvalidAlertError
from tvbridge.models import (
    AlertType,
    CancelAlert,
    CancelLeg,
    Exchange,
    ExpiryRef,
    Instrument,
    MarketPosition,
    Meta,
    OptionType,
    OrderAlert,
    OrderLeg,
    OrderType,
    PositionAction,
    Product,
    QuantityType,
    QuantityUnit,
    Side,
)
from tvbridge.tickers import TickerError, read_option_ticker, same_venue, split_prefix
from tvbridge.validation import validation_messages

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from tvbridge.models import Alert

E = TypeVar("E", bound=Enum)

PLACEHOLDER: Final = re.compile(r"\{\{\s*[^{}]*?\s*\}\}")

# Numbers are checked as ASCII text with bounded length BEFORE any int()/Decimal() conversion: `1e3000000` or a
# 60 KB digit string would otherwise freeze the event loop (int(Decimal("1e400000")) is quadratic) or make
# 10 MB order-log rows. A sign is let through the pattern so the range checks can say what is wrong with `-3`.
MAX_INT_DIGITS: Final = 9
MAX_DECIMAL_DIGITS: Final = (10, 8)
WHOLE: Final = re.compile(r"(-?)([0-9]{1,9})(?:\.0{1,8})?")
NUMERIC: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
DECIMAL: Final = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,8})?")
ISO_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
EPOCH_MS: Final = re.compile(r"[0-9]{1,15}")
MAX_STAMP_CHARS: Final = 40
MAX_LEGS: Final = 50
MAX_ERROR_LINES: Final = 50
MAX_SHOWN_CHARS: Final = 40

# Alert keys (Dhan's / the guide's spelling) for our attribute names.
LEG_KEYS: Final = {
    "side": "transactionType",
    "order_type": "orderType",
    "product": "productType",
    "trigger_price": "triggerPrice",
    "amo_time": "amoTime",
}
ALERT_KEYS: Final = {"alert_type": "alertType", "legs": "order_legs", "key": "id"}
ROOT_EXTRA_KEYS: Final = frozenset({"secret", "idempotency_key"})

ALIASES: Final[Mapping[type[Enum], Mapping[str, str]]] = {
    Side: {"BUY": "B", "SELL": "S"},
    OrderType: {
        "MARKET": "MKT",
        "LIMIT": "LMT",
        "STOP_LOSS": "SL",
        "SL_M": "SL-M",
        "SLM": "SL-M",
        "STOP_LOSS_MARKET": "SL-M",
    },
    Product: {"CNC": "C", "INTRADAY": "I", "MIS": "I", "MARGIN": "M", "NRML": "M"},
    QuantityUnit: {"unit": "units", "lot": "lots"},
    QuantityType: {"percent": "percent_of_funds", "percentage": "percent_of_funds"},
}
LOWER_CASE_ENUMS: Final = frozenset({AlertType, QuantityUnit, MarketPosition, QuantityType, ExpiryRef})
ATM: Final = re.compile(r"ATM(?:\s*([+-])\s*([0-9]{1,3}))?", re.IGNORECASE)
"""`strike_price: "ATM"`, `"ATM+2"`, `"ATM-1"`: strikes counted on the listed grid from the underlying's price."""
MAX_STRIKE_OFFSET: Final = 50
TARGET_KEYS: Final = ("position_size", "market_position")


def _check_placeholder(value: str) -> None:
    found = PLACEHOLDER.search(value)
    if found:
        msg = f"unreplaced TradingView placeholder {found.group(0)}: TradingView did not fill it in"
        raise ValueError(msg)


def _structure_str(value: object, _: type) -> str:
    """Text; a JSON integer is taken as its digits, a float is not (1e20 would become "1e+20")."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a string, got {_describe(value)}")
    text = str(value).strip()
    _check_placeholder(text)
    return text


def _structure_symbol(value: object, _: type) -> str:
    """A symbol is a JSON string: a number would be reformatted (1e20 -> "1e+20") and name another instrument."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {_describe(value)}")
    return _structure_str(value, str)


def _shown(text: str) -> str:
    """`text` quoted for a message, cut short: an error line must not echo 60 KB back."""
    if len(text) <= MAX_SHOWN_CHARS:
        return repr(text)
    return f"{text[:MAX_SHOWN_CHARS]!r}... ({len(text)} characters)"


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return _shown(value)
    return repr(value)


def _text_of(value: object) -> str:
    """A scalar as text, refusing objects, lists, null and booleans with a message that says what came.

    A JSON float becomes its `repr` (1e+30, 101.5), so the number checks below see its exponent too."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValueError(f"expected a value, got {_describe(value)}")
    text = (repr(value) if isinstance(value, float) else str(value)).strip()
    _check_placeholder(text)
    return text


def _structure_decimal(value: object, _: type) -> Decimal:
    """Plain ASCII decimal text, at most 10 digits before the point and 8 after; checked before Decimal()."""
    if isinstance(value, Decimal):  # from our own code (tests, conformance specs), not from JSON
        value = str(value)
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {_describe(value)}")
    text = _text_of(value)
    if DECIMAL.fullmatch(text):
        return Decimal(text)
    if not NUMERIC.fullmatch(text):
        raise ValueError(f"must be a number, got {_shown(text)}")
    if text.startswith("-"):
        raise ValueError(f"must be a number >= 0, got {_shown(text)}")
    before, after = MAX_DECIMAL_DIGITS
    raise ValueError(
        f"must have at most {before} digits before the decimal point and {after} after, got {_shown(text)}"
    )


def _structure_int(value: object, _: type) -> int:
    """ASCII digits only (at most 9, an optional `.0`); no exponent, `_`, other scripts' digits or booleans."""
    if type(value) is str and len(value) <= MAX_INT_DIGITS and value.isdigit() and value.isascii():
        return int(value)  # TradingView's common "10": what the checks below would make of it
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, got {_describe(value)}")
    text = _text_of(value)
    whole = WHOLE.fullmatch(text)
    if whole:
        sign, digits = whole.groups()
        return -int(digits) if sign else int(digits)
    if NUMERIC.fullmatch(text) and "." not in text:
        raise ValueError(f"must be a whole number of at most {MAX_INT_DIGITS} digits, got {_shown(text)}")
    raise ValueError(f"must be a whole number, got {_shown(text)}")


def _structure_enum(value: object, cls: type[E]) -> E:
    if type(value) is str:
        exact: E | None = _exact_members(cls).get(value)
        if exact is not None:
            return exact
    return _enum_of_text(value, cls)


def _enum_of_text(value: object, cls: type[E]) -> E:
    text = _text_of(value)
    normalized = text.lower() if cls in LOWER_CASE_ENUMS else text.upper()
    normalized = ALIASES.get(cls, {}).get(normalized, normalized)
    try:
        return cls(normalized)
    except ValueError:
        allowed = ", ".join(str(member.value) for member in cls)
        raise ValueError(f"must be one of {allowed}, got {text!r}") from None


@functools.cache
def _exact_members(cls: type[E]) -> dict[str, E]:
    """The common texts of `cls` (its values and aliases as written in the docs: `"B"`, `"MKT"`, `"BUY"`), each
    with the member `_enum_of_text` makes of it, worked out by it once: the common alert's values then skip the
    stripping, the case-folding and the placeholder search, with the same result."""
    texts = [str(member.value) for member in cls] + list(ALIASES.get(cls, {}))
    return {text: _enum_of_text(text, cls) for text in texts}


def _structure_date(value: object, _: type) -> date:
    if type(value) is date:  # a bare TOML date in config.toml (extra_holidays = [2026-11-24]) arrives parsed
        return value
    text = _text_of(value)
    try:
        if ISO_DATE.fullmatch(text):
            return date.fromisoformat(text)
        # A full ISO timestamp (2026-11-26T00:00:00Z) is taken if it parses completely; `2026-11-26garbage` is not.
        if len(text) <= MAX_STAMP_CHARS and ISO_DATE.match(text) and text[10:11] in {"T", " "}:
            return datetime.fromisoformat(text).date()
    except ValueError:
        pass
    raise ValueError(f"must be a date YYYY-MM-DD, got {_shown(text)}")


def _structure_datetime(value: object, _: type) -> datetime:
    text = _text_of(value)
    stamp: datetime | None = None
    try:
        if EPOCH_MS.fullmatch(text):  # TradingView's {{time}} can also arrive as epoch milliseconds
            stamp = datetime.fromtimestamp(int(text) / 1000, UTC)
        elif len(text) <= MAX_STAMP_CHARS and ISO_DATE.match(text):
            stamp = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        pass
    if stamp is None:
        raise ValueError(f"must be an ISO 8601 time such as 2025-11-20T10:30:00Z, got {_shown(text)}")
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _leg_problems(leg: OrderLeg) -> list[Exception]:
    """Rules that span fields; each error is attributed to the field the trader has to fix."""
    problems: list[Exception] = []

    def add(field: str, message: str) -> None:
        problems.append(_field_error(field, message))

    target = is_target(leg)
    if leg.quantity < 0 or (leg.quantity == 0 and leg.manage_position is None and not target):
        add("quantity", f"must be a positive whole number, got {leg.quantity}")
    problems.extend(_strategy_problems(leg))
    if leg.order_type in {OrderType.LIMIT, OrderType.STOP_LOSS} and leg.price <= 0:
        add("price", f"must be > 0 for orderType {leg.order_type}")
    if leg.order_type in {OrderType.STOP_LOSS, OrderType.STOP_LOSS_MARKET} and not leg.trigger_price:
        add("triggerPrice", f"is required (> 0) for orderType {leg.order_type}")
    if not leg.symbol:
        add("symbol", "must not be empty")
    if leg.instrument is Instrument.OPTION:
        problems.extend(_option_problems(leg))
    else:
        problems.extend(_contract_field_problems(leg))
    problems.extend(_field_error(field, message) for field, message in bracket_problems(leg))
    return problems


def is_target(leg: OrderLeg) -> bool:
    """Whether the leg asks for a position (`position_size` / `market_position`) rather than for an order."""
    return leg.position_size is not None or leg.market_position is not None


def _strategy_problems(leg: OrderLeg) -> list[Exception]:
    """Target positions, sizing and relative contracts (strategy alerts)."""
    problems: list[Exception] = []
    if is_target(leg):
        problems.extend(_target_problems(leg))
    if leg.quantity_type not in {None, QuantityType.FIXED}:
        problems.extend(_sizing_problems(leg))
    if leg.strike_offset is not None and leg.strike_price is not None:  # an option ticker named the strike
        message = f"ATM{leg.strike_offset:+d} contradicts the strike {leg.strike_price} of the option ticker"
        problems.append(_field_error("strike_price", message))
    if leg.expiry_ref is not None and leg.expiry_date is not None:
        message = f"{leg.expiry_ref} contradicts the expiry {leg.expiry_date} of the option ticker"
        problems.append(_field_error("expiry_date", message))
    if leg.strike_offset is not None and leg.instrument is not Instrument.OPTION:
        problems.append(_field_error("strike_price", f"ATM strikes are for options only, got {leg.instrument}"))
    if leg.expiry_ref is not None and leg.instrument not in {Instrument.OPTION, Instrument.FUTURE}:
        message = f"{leg.expiry_ref} names an expiry: only for instrument FUT or OPT, got {leg.instrument}"
        problems.append(_field_error("expiry_date", message))
    return problems


def _target_problems(leg: OrderLeg) -> list[Exception]:
    """A target the alert contradicts itself about is refused with both values shown: which one the strategy
    meant cannot be told, and guessing trades real money."""
    problems: list[Exception] = []

    def add(field: str, message: str) -> None:
        problems.append(_field_error(field, message))

    if leg.manage_position is not None:
        add("manage_position", f"{leg.manage_position} contradicts a target position (position_size 0 closes it)")
    size, where, amount = leg.position_size, leg.market_position, leg.market_position_size
    if amount is not None and amount < 0:
        add("market_position_size", f"must be >= 0 (market_position gives the side), got {amount}")
    if where is None:
        if amount is not None:
            add("market_position_size", "needs market_position (long, short or flat)")
        return problems
    if where is MarketPosition.FLAT and amount:
        add("market_position_size", f"{amount} contradicts market_position flat")
    if where is not MarketPosition.FLAT and amount is None and size is None:
        add("market_position_size", f"is required with market_position {where} (the size of the position)")
    if size is not None:
        problems.extend(_size_contradictions(size, where, amount))
    return problems


def _size_contradictions(size: int, where: MarketPosition, amount: int | None) -> list[Exception]:
    problems: list[Exception] = []
    sign = 1 if size > 0 else -1 if size < 0 else 0
    if sign != {MarketPosition.LONG: 1, MarketPosition.SHORT: -1, MarketPosition.FLAT: 0}[where]:
        problems.append(_field_error("market_position", f"{where} contradicts position_size {size}"))
    if amount is not None and amount != abs(size):
        problems.append(_field_error("market_position_size", f"{amount} contradicts position_size {size}"))
    return problems


def _sizing_problems(leg: OrderLeg) -> list[Exception]:
    problems: list[Exception] = []
    if leg.price <= 0:
        problems.append(_field_error("price", f"must be > 0 for quantity_type {leg.quantity_type} (sizing uses it)"))
    if leg.quantity_type is QuantityType.RISK and leg.order_type in {OrderType.STOP_LOSS, OrderType.STOP_LOSS_MARKET}:
        message = (
            f"risk sizing takes triggerPrice as the stop, but on orderType {leg.order_type} it is the entry trigger"
        )
        problems.append(_field_error("quantity_type", f"{message}: use MKT or LMT with triggerPrice as the stop"))
    elif leg.quantity_type is QuantityType.RISK and (not leg.trigger_price or leg.trigger_price == leg.price):
        message = "is required for quantity_type risk, different from price (the stop: risk per unit is the distance)"
        problems.append(_field_error("triggerPrice", message))
    if is_target(leg):
        problems.append(_field_error("quantity_type", f"{leg.quantity_type} does not apply to a target position"))
    return problems


def _option_problems(leg: OrderLeg) -> list[Exception]:
    problems: list[Exception] = []
    if leg.option_type is None:
        problems.append(_field_error("option_type", "is required for instrument OPT (CE or PE)"))
    if leg.strike_price is None and leg.strike_offset is None:
        message = "is required for options (the nearest expiry is not guessed): a strike, or ATM, ATM+N, ATM-N"
        problems.append(_field_error("strike_price", message))
    if leg.expiry_date is None and leg.expiry_ref is None:
        message = (
            "is required for options (the nearest expiry is not guessed): a date, or current_week, next_week,"
            " current_month, next_month"
        )
        problems.append(_field_error("expiry_date", message))
    if leg.strike_offset is not None and leg.underlying_price is None:
        problems.append(_field_error("underlying_price", "is required for a strike relative to ATM ({{close}})"))
    if leg.strike_price is not None and leg.strike_price <= 0:
        problems.append(_field_error("strike_price", f"must be > 0 for options, got {leg.strike_price}"))
    return problems


def _contract_field_problems(leg: OrderLeg) -> list[Exception]:
    """An option's fields on a future or a share: the broker would trade the future (or the share) and leave them
    out, while the alert may have meant the option; and the position would be booked under a contract nobody
    holds (`positions.book_key`), out of reach of the exits that name the real one. Refused, not guessed."""
    problems: list[Exception] = []
    option_only = (
        f"is for options only (instrument OPT, CE or PE), got {leg.instrument}: remove it, or trade the option"
    )
    if leg.option_type is not None:
        problems.append(_field_error("option_type", option_only))
    if leg.strike_price is not None:
        problems.append(_field_error("strike_price", option_only))
    if leg.expiry_date is not None and leg.instrument is Instrument.EQUITY:
        message = f"is for futures and options only, got {leg.instrument}: remove it"
        problems.append(_field_error("expiry_date", message))
    return problems


def _relative(raw: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[Exception]]:
    """`strike_price: "ATM+2"` and `expiry_date: "current_week"` become `strike_offset` / `expiry_ref`, resolved
    per account from the broker's instrument master (`contracts.py`); a strike that starts like ATM but is not one
    is refused here, not read as a number."""
    taken = dict(raw)
    problems: list[Exception] = []
    strike = raw.get("strike_price")
    if isinstance(strike, str) and strike.strip().upper().startswith("ATM"):
        found = ATM.fullmatch(strike.strip())
        del taken["strike_price"]
        if found is None or (found.group(2) and int(found.group(2)) > MAX_STRIKE_OFFSET):
            message = f"must be a number, ATM, ATM+N or ATM-N (N up to {MAX_STRIKE_OFFSET}), got {_shown(strike)}"
            problems.append(_field_error("strike_price", message))
        else:
            sign, count = found.groups()
            taken["strike_offset"] = (-1 if sign == "-" else 1) * int(count or 0)
    expiry = raw.get("expiry_date")
    if isinstance(expiry, str) and expiry.strip().lower() in set(ExpiryRef):
        del taken["expiry_date"]
        taken["expiry_ref"] = expiry.strip().lower()
    return taken, problems


def _target_defaults(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """A target-position leg may leave out `transactionType` and `quantity`: the difference to the account's
    position decides both (here: a placeholder BUY of 0, replaced before anything is sent)."""
    if not any(raw.get(key) not in (None, "") for key in TARGET_KEYS):
        return raw
    taken = dict(raw)
    if taken.get("quantity") in (None, ""):
        taken["quantity"] = 0
    if taken.get("transactionType") in (None, ""):
        taken["transactionType"] = Side.BUY.value
    return taken


def _exit_quantity(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """An EXIT_ALL leg may leave `quantity` out: the broker's position decides it (0 here means "not given")."""
    action = raw.get("manage_position")
    if (
        isinstance(action, str)
        and action.strip().upper() == PositionAction.EXIT_ALL
        and raw.get("quantity")
        in (
            None,
            "",
        )
    ):
        return {**raw, "quantity": 0}
    return raw


def _field_error(field: str, message: str) -> ValueError:
    error = ValueError(message)
    error.add_note(cattrs.errors.AttributeValidationNote(f"Structuring class @ attribute {field}", field, str))
    return error


def _fold_option(raw: Mapping[str, Any], leg: OrderLeg) -> OrderLeg:
    """The guide's `instrument: CE|PE` is an option with that type; keep one shape for brokers."""
    if leg.instrument in {Instrument.CALL, Instrument.PUT}:
        option_type = OptionType(leg.instrument.value)
        if leg.option_type is not None and leg.option_type is not option_type and raw.get("option_type"):
            raise ClassValidationError(
                "option",
                [_field_error("option_type", f"{leg.option_type} contradicts instrument {leg.instrument}")],
                OrderLeg,
            )
        return attrs.evolve(leg, instrument=Instrument.OPTION, option_type=option_type)
    return leg


def _take_prefix(raw: Mapping[str, Any]) -> tuple[Mapping[str, Any], Exchange | None, list[Exception]]:
    """TradingView's `NSE:RELIANCE`: the symbol without its prefix, the prefix's exchange (None without one) and
    the problems found. A leg without an `exchange` key takes the prefix's."""
    symbol = raw.get("symbol")
    if not isinstance(symbol, str) or PLACEHOLDER.search(symbol):
        return raw, None, []  # not text, or an unreplaced placeholder: the symbol hook says what is wrong
    try:
        prefixed = split_prefix(symbol.strip())
    except TickerError as e:
        return raw, None, [_field_error("symbol", str(e))]
    if prefixed.exchange is None:
        return raw, None, []
    taken = {**raw, "symbol": prefixed.symbol}
    if taken.get("exchange") is None:
        taken["exchange"] = prefixed.exchange.value
    return taken, prefixed.exchange, []


def _prefix_problems(raw: Mapping[str, Any], prefix: Exchange | None, exchange: Exchange) -> list[Exception]:
    """A prefix naming another exchange than the leg's `exchange` key: neither is preferred, the trader decides."""
    if prefix is None or same_venue(prefix, exchange):
        return []
    message = f"exchange prefix {prefix} of {prefix}:{raw.get('symbol')} contradicts exchange {exchange}"
    return [_field_error("symbol", message)]


def _read_option_ticker(leg: OrderLeg, problems: list[Exception]) -> OrderLeg:
    """An option leg whose symbol is a TradingView option ticker (`NIFTY261229C24000`): underlying, expiry,
    strike and CE/PE from the ticker. Fields the alert also gives must agree with it (else a problem each)."""
    if leg.instrument is not Instrument.OPTION:
        return leg
    try:
        ticker = read_option_ticker(leg.symbol)
    except TickerError as e:
        problems.append(_field_error("symbol", str(e)))
        return leg
    if ticker is None:
        return leg
    given = (
        ("option_type", leg.option_type, ticker.option_type),
        ("strike_price", leg.strike_price, ticker.strike_price),
        ("expiry_date", leg.expiry_date, ticker.expiry_date),
    )
    for field, value, read in given:
        if value is not None and value != read:
            problems.append(_field_error(field, f"{value} contradicts the option ticker {leg.symbol} ({read})"))
    return attrs.evolve(
        leg,
        symbol=ticker.underlying,
        option_type=ticker.option_type,
        strike_price=ticker.strike_price,
        expiry_date=ticker.expiry_date,
    )


def _renamed(cls: type, keys: Mapping[str, str]) -> dict[str, Any]:
    overrides = {name: override(rename=alias) for name, alias in keys.items() if name in attrs.fields_dict(cls)}
    if "symbol" in attrs.fields_dict(cls):
        overrides["symbol"] = override(struct_hook=_structure_symbol)
    return overrides


def make_converter() -> cattrs.Converter:
    """The converter for the alert and the config; build it once and share it (`keys.CONVERTER`)."""
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    _register_scalars(converter)
    _register_config(converter)
    _register_alert(converter)
    return converter


def _register_scalars(converter: cattrs.Converter) -> None:
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(Decimal, _structure_decimal)
    converter.register_structure_hook(date, _structure_date)
    converter.register_structure_hook(datetime, _structure_datetime)
    converter.register_structure_hook(Path, lambda value, _: Path(_text_of(value)))
    converter.register_unstructure_hook(Path, str)
    converter.register_unstructure_hook(Decimal, str)
    # Our enums are StrEnums: registered one by one, or the `str` hook would win by MRO and skip the check.
    for enum_cls in (
        AlertType,
        Side,
        OrderType,
        Exchange,
        Instrument,
        OptionType,
        Product,
        PositionAction,
        QuantityUnit,
        MarketPosition,
        QuantityType,
        ExpiryRef,
    ):
        converter.register_structure_hook(enum_cls, _structure_enum)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(float, _structure_float)


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_describe(value)}")
    return value


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {_describe(value)}")
    return float(value)


def _register_config(converter: cattrs.Converter) -> None:
    """Every class in `tvbridge.config` refuses unknown keys: a typo in config.toml stops the start."""

    def factory(cls: type) -> Callable[[Any, type], Any]:
        return make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)

    converter.register_structure_hook_factory(
        lambda t: attrs.has(t) and getattr(t, "__module__", "") == config_module.__name__, factory
    )


def _register_alert(converter: cattrs.Converter) -> None:
    base_leg = make_dict_structure_fn(OrderLeg, converter, **_renamed(OrderLeg, LEG_KEYS))
    base_cancel = make_dict_structure_fn(CancelLeg, converter, **_renamed(CancelLeg, LEG_KEYS))
    base_order_alert = make_dict_structure_fn(OrderAlert, converter, **_renamed(OrderAlert, ALERT_KEYS))
    base_cancel_alert = make_dict_structure_fn(CancelAlert, converter, **_renamed(CancelAlert, ALERT_KEYS))
    _register_meta(converter)

    def leg_hook(raw: object, _: type) -> OrderLeg:
        relative, problems = _relative(_target_defaults(_exit_quantity(_expect_object(raw))))
        return _structure_leg(relative, base_leg, problems)

    def cancel_hook(raw: object, _: type) -> CancelLeg:
        return _structure_cancel(_expect_object(raw), base_cancel)

    def alert_hook(raw: object, _: type) -> Alert:
        raw = dict(_expect_object(raw))
        if "id" not in raw and raw.get("idempotency_key") is not None:
            raw["id"] = raw["idempotency_key"]
        _check_legs_list(raw.get("order_legs"))
        kind = raw.get("alertType")
        is_cancel = isinstance(kind, str) and kind.strip().lower() == AlertType.CANCEL_ORDER.value
        cls: type[OrderAlert | CancelAlert] = CancelAlert if is_cancel else OrderAlert
        try:
            alert: Alert = base_cancel_alert(raw, CancelAlert) if is_cancel else base_order_alert(raw, OrderAlert)
        except ClassValidationError as e:
            raise ClassValidationError(e.message, _renamed_notes(e.exceptions, ALERT_KEYS), cls) from None
        return _check_alert(alert)

    converter.register_structure_hook(OrderLeg, leg_hook)
    converter.register_structure_hook(CancelLeg, cancel_hook)
    converter.register_structure_hook_func(
        lambda t: t in (OrderAlert, CancelAlert) or t == (OrderAlert | CancelAlert), alert_hook
    )


def _structure_leg(
    raw: Mapping[str, Any], base: Callable[[Mapping[str, Any], type], OrderLeg], early: Sequence[Exception] = ()
) -> OrderLeg:
    raw, prefix, problems = _take_prefix(raw)
    problems = [*early, *problems]
    try:
        leg = base(raw, OrderLeg)
    except ClassValidationError as e:
        raise ClassValidationError(e.message, _renamed_notes([*e.exceptions, *problems], LEG_KEYS), OrderLeg) from None
    leg = _fold_option(raw, leg)
    problems += _prefix_problems(raw, prefix, leg.exchange)
    leg = _read_option_ticker(leg, problems)
    problems += _leg_problems(leg)
    if problems:
        raise ClassValidationError("invalid order leg", problems, OrderLeg)
    return leg


def _structure_cancel(raw: Mapping[str, Any], base: Callable[[Mapping[str, Any], type], CancelLeg]) -> CancelLeg:
    raw, prefix, problems = _take_prefix(raw)
    try:
        leg = base(raw, CancelLeg)
    except ClassValidationError as e:
        raise ClassValidationError(e.message, _renamed_notes([*e.exceptions, *problems], LEG_KEYS), CancelLeg) from None
    if leg.exchange is not None:
        problems += _prefix_problems(raw, prefix, leg.exchange)
    if not leg.order_id and not leg.symbol:
        problems.append(_field_error("symbol", "give a symbol or an order_id"))
    if problems:
        raise ClassValidationError("cancel", problems, CancelLeg)
    return leg


def _register_meta(converter: cattrs.Converter) -> None:
    base_meta = make_dict_structure_fn(Meta, converter)

    def meta_hook(raw: object, _: type) -> Meta:
        # "meta": "x" or [...] must not pass as an empty Meta: that would skip the age check unseen.
        return base_meta(_expect_object(raw), Meta)

    converter.register_structure_hook(Meta, meta_hook)


def _renamed_notes(exceptions: Sequence[Exception], keys: Mapping[str, str]) -> list[Exception]:
    """cattrs notes carry our attribute names; the trader reads the alert's keys (`transactionType`)."""
    for exc in exceptions:
        for note in getattr(exc, "__notes__", []):
            if isinstance(note, cattrs.errors.AttributeValidationNote) and note.name in keys:
                note.name = keys[note.name]
    return list(exceptions)


def _expect_object(raw: object) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"must be a JSON object, got {_describe(raw)}")
    return raw


def _check_legs_list(legs: object) -> None:
    """`order_legs` is a list of at most MAX_LEGS legs, checked before any leg is looked at: 64 KB of `{}` legs
    took seconds and answered megabytes; a string or an object would be walked character by character or key
    by key."""
    if legs is None:
        return  # "required field missing" comes from cattrs
    if not isinstance(legs, list):
        problem = f"must be a JSON list of legs, got {_describe(legs)}"
    elif len(legs) > MAX_LEGS:
        problem = f"at most {MAX_LEGS} legs in one alert, got {len(legs)}"
    else:
        return
    raise ClassValidationError("invalid alert", [_field_error("order_legs", problem)], OrderAlert)


def _check_alert(alert: Alert) -> Alert:
    problems: list[Exception] = []
    if not alert.legs:
        problems.append(_field_error("order_legs", "must hold at least one leg"))
    if alert.alert_type is AlertType.SINGLE_ORDER and len(alert.legs) > 1:
        problems.append(_field_error("order_legs", f"single_order takes exactly one leg, got {len(alert.legs)}"))
    if problems:
        raise ClassValidationError("invalid alert", problems, type(alert))
    if isinstance(alert, OrderAlert):
        ordered = sorted(
            enumerate(alert.legs), key=lambda p: (p[1].sort_order if p[1].sort_order is not None else p[0] + 1, p[0])
        )
        if any(n != i for n, (i, _) in enumerate(ordered)):
            return attrs.evolve(alert, legs=tuple(leg for _, leg in ordered))
    return alert


class DuplicateKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook`: a key given twice is refused (`"transactionType":"B", ..., "transactionType":"S"`
    would otherwise silently sell). One dict() and two len() per object: the cheap path stays in C."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return obj


def decode_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; `BadRequestError` (400) says why it is not one."""
    try:
        raw = json.loads(body, object_pairs_hook=_unique_keys)
    except UnicodeDecodeError:
        raise BadRequestError("body is not JSON: it is not UTF-8 text") from None
    except DuplicateKeyError as e:
        raise BadRequestError(f"body has the key {_shown(str(e))} twice in one object: send each key once") from None
    except RecursionError:
        raise BadRequestError("body is not JSON: it is nested too deeply") from None
    except ValueError as e:
        detail = "the body is empty" if not body.strip() else str(e)
        raise BadRequestError(f"body is not JSON: {detail}") from None
    if not isinstance(raw, dict):
        raise BadRequestError(f"body must be a JSON object (the alert), got {_describe(raw)}")
    return raw


def unknown_keys(raw: Mapping[str, Any]) -> list[str]:
    """Warnings for keys the alert format does not know (a typo such as `triggerprice` must be visible)."""
    warnings: list[str] = []
    root_known = {ALERT_KEYS.get(f.name, f.name) for f in attrs.fields(OrderAlert)} | ROOT_EXTRA_KEYS
    leg_known = {LEG_KEYS.get(f.name, f.name) for f in attrs.fields(OrderLeg)}
    leg_known |= {LEG_KEYS.get(f.name, f.name) for f in attrs.fields(CancelLeg)}
    meta_known = {f.name for f in attrs.fields(Meta)}

    left_out = 0

    def check(mapping: Mapping[str, Any], known: set[str] | frozenset[str], where: str) -> None:
        nonlocal left_out
        for key in mapping:
            if key not in known:
                if len(warnings) >= MAX_ERROR_LINES:  # difflib per key is slow: thousands of keys blocked the loop
                    left_out += 1
                    continue
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
                warnings.append(f"{where}{key}: unknown key, ignored{hint}")

    legs = raw.get("order_legs")
    legs = legs if isinstance(legs, list) else []
    objects = [(raw, ""), *((leg, f"order_legs[{i}].") for i, leg in enumerate(legs) if isinstance(leg, dict))]
    for mapping, where in objects:  # the root, then each leg; each with its own `meta`
        check(mapping, root_known if not where else leg_known, where)
        meta = mapping.get("meta")
        if isinstance(meta, dict):
            check(meta, meta_known, f"{where}meta.")
    if left_out:
        warnings.append(f"... and {left_out} more unknown key(s) not shown")
    return warnings


def might_hold_surrogates(body: bytes) -> bool:
    """Whether a JSON body can hold a lone surrogate at all: only a `\\u` escape or UTF-8 bytes of U+D800..U+DFFF
    (which `json.loads` lets through) make one. Two scans in C, so the common alert pays nothing more."""
    return b"\\u" in body or b"\xed" in body


def check_encodable(raw: Mapping[str, Any]) -> None:
    """`InvalidAlertError` (422) naming every key or value that is not encodable text (a lone surrogate such as
    `"\\ud800"`): it could be written to no log, order log or broker request, and must not become a 500 or an
    `unknown` leg half-way. The root `secret` is left to the auth check (there it is a wrong secret)."""
    problems: list[str] = []
    unencodable = "cannot be encoded (a lone surrogate such as \\ud800)"

    def walk(node: object, path: str) -> None:
        if isinstance(node, str) and not _encodable(node):
            problems.append(f"{path or 'alert'}: text that {unencodable}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")
        elif isinstance(node, dict):
            for key, value in node.items():
                if not _encodable(str(key)):
                    problems.append(f"{path or 'alert'}: a key that {unencodable}")
                elif path or key != "secret":
                    walk(value, f"{path}.{key}" if path else str(key))

    walk(raw, "")
    if problems:
        raise InvalidAlertError(_capped(problems))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_alert(raw: Mapping[str, Any], converter: cattrs.Converter) -> Alert:
    """The alert in `raw`; `InvalidAlertError` (422) lists every problem with its path.

    The common alert (an order alert whose legs name only the plain order's keys) takes `common_order_alert`;
    anything else, and any problem at all, goes through the converter, which says what is wrong."""
    common = common_order_alert(raw)
    if common is not None:
        return common
    try:
        alert: Alert = converter.structure(raw, OrderAlert | CancelAlert)  # type: ignore[arg-type]  # a union is a valid target for a registered hook
    except (cattrs.BaseValidationError, ValueError) as e:
        raise InvalidAlertError(_capped(validation_messages(e, root="alert"))) from None
    return alert


_COMMON_LEG: Final[Mapping[str, tuple[str, Callable[[object, Any], Any], type, bool]]] = {
    # alert key: (attribute, the converter's own hook for it, its type, whether JSON null means "not given")
    "transactionType": ("side", _structure_enum, Side, False),
    "orderType": ("order_type", _structure_enum, OrderType, False),
    "quantity": ("quantity", _structure_int, int, False),
    "exchange": ("exchange", _structure_enum, Exchange, False),
    "symbol": ("symbol", _structure_symbol, str, False),
    "instrument": ("instrument", _structure_enum, Instrument, False),
    "productType": ("product", _structure_enum, Product, False),
    "sort_order": ("sort_order", _structure_int, int, True),
    "price": ("price", _structure_decimal, Decimal, False),
    "triggerPrice": ("trigger_price", _structure_decimal, Decimal, True),
}
_COMMON_REQUIRED: Final = frozenset(
    {"transactionType", "orderType", "quantity", "exchange", "symbol", "instrument", "productType"}
)
_COMMON_ROOT: Final = frozenset({"secret", "alertType", "order_legs", "id", "idempotency_key", "meta"})
_PLAIN_INSTRUMENTS: Final = frozenset({Instrument.EQUITY, Instrument.FUTURE})


class _Unusual(Exception):  # noqa: N818 - not an error: "take the converter's way"
    """Not the common shape: the converter parses it (and names its problems)."""


def common_order_alert(raw: Mapping[str, Any]) -> OrderAlert | None:
    """The common alert parsed without cattrs (issue 22: cattrs was ~5% of the CPU per alert), or None.

    Only an order alert whose root has no keys but `secret`, `alertType`, `order_legs`, `id`,
    `idempotency_key` and `meta`, and whose legs have no keys but those of `_COMMON_LEG` and `meta`, on an
    equity or a future, with a symbol without an exchange prefix. Every value goes through the converter's own
    hook for it, and the cross-field rules run as they do there (`_leg_problems`, `_check_alert`); on any
    problem, or anything else, None: `parse_alert` then asks the converter, the one that words the 422. So the
    result is the converter's, field for field (tests/test_parsing_common.py compares them)."""
    try:
        if not _COMMON_ROOT.issuperset(raw):
            return None
        alert_type = _structure_enum(raw["alertType"], AlertType)
        if alert_type is AlertType.CANCEL_ORDER:
            return None
        legs = raw["order_legs"]
        if not isinstance(legs, list) or not 0 < len(legs) <= MAX_LEGS:
            return None
        key = raw.get("id")
        if "id" not in raw and raw.get("idempotency_key") is not None:
            key = raw["idempotency_key"]
        alert = OrderAlert(
            alert_type=alert_type,
            legs=tuple(_common_leg(leg) for leg in legs),
            key=None if key is None else _structure_str(key, str),
            meta=_common_meta(raw.get("meta")),
        )
        checked = _check_alert(alert)
    except Exception:  # noqa: BLE001 - any problem at all: the converter's way says which
        return None
    assert isinstance(checked, OrderAlert)  # noqa: S101 - _check_alert keeps the alert's class
    return checked


def _common_leg(raw: object) -> OrderLeg:
    if not isinstance(raw, dict) or not _COMMON_REQUIRED.issubset(raw):
        raise _Unusual
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "meta":
            fields["meta"] = _common_meta(value)
            continue
        name, hook, kind, optional = _COMMON_LEG[key]  # another key: KeyError, the converter's way
        fields[name] = None if optional and value is None else hook(value, kind)
    leg = OrderLeg(**fields)
    if leg.instrument not in _PLAIN_INSTRUMENTS or ":" in leg.symbol or _leg_problems(leg):
        raise _Unusual
    return leg


def _common_meta(raw: object) -> Meta | None:
    """`meta` as the converter reads it: null is none, other keys are ignored (`unknown_keys` warns of them)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _Unusual
    interval, time, timenow = raw.get("interval"), raw.get("time"), raw.get("timenow")
    return Meta(
        interval=None if interval is None else _structure_str(interval, str),
        time=None if time is None else _structure_str(time, str),
        timenow=None if timenow is None else _structure_datetime(timenow, datetime),
    )


def _capped(lines: list[str]) -> list[str]:
    """At most MAX_ERROR_LINES lines in a 422, and a last line saying how many were left out."""
    if len(lines) <= MAX_ERROR_LINES:
        return lines
    more = len(lines) - MAX_ERROR_LINES
    return [*lines[:MAX_ERROR_LINES], f"... and {more} more problem(s) not shown: fix these first"]


ALERT_EXAMPLE: Final = {
    "secret": "...",
    "alertType": "multi_leg_order",
    "order_legs": [
        {
            "transactionType": "B",
            "orderType": "MKT",
            "quantity": "1",
            "exchange": "NSE",
            "symbol": "{{ticker}}",
            "instrument": "EQ",
            "productType": "C",
            "sort_order": "1",
            "price": "0",
            "meta": {"interval": "{{interval}}", "time": "{{time}}", "timenow": "{{timenow}}"},
        }
    ],
}
