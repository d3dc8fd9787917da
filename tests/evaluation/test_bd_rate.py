import numpy as np
import pytest

from slim_diffusers.evaluation.bd_rate import METHODS, BDRateError, bd_accuracy, bd_rate

# A rate–accuracy curve of the kind the harness produces: bits per pixel, top-1 accuracy in percent.
RATE = np.array([0.02, 0.05, 0.1, 0.2, 0.4])
ACCURACY = np.array([31.0, 52.5, 64.0, 71.2, 74.9])


@pytest.mark.parametrize("method", METHODS)
def test_a_curve_against_itself_is_zero(method):
    assert bd_rate(RATE, ACCURACY, RATE, ACCURACY, method=method) == pytest.approx(0.0, abs=1e-9)
    assert bd_accuracy(RATE, ACCURACY, RATE, ACCURACY, method=method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_half_the_rate_for_the_same_accuracy_is_minus_50_percent(method):
    assert bd_rate(RATE, ACCURACY, RATE / 2, ACCURACY, method=method) == pytest.approx(-50.0, abs=1e-9)
    assert bd_rate(RATE / 2, ACCURACY, RATE, ACCURACY, method=method) == pytest.approx(100.0, abs=1e-9)
    # at equal rate the cheaper codec is the more accurate one
    assert bd_accuracy(RATE, ACCURACY, RATE / 2, ACCURACY, method=method) > 1.0
    # the order of the points does not matter
    order = [3, 0, 4, 1, 2]
    assert bd_rate(RATE[order], ACCURACY[order], RATE / 2, ACCURACY, method=method) == pytest.approx(-50.0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_a_constant_accuracy_gain_is_measured_exactly(method):
    # BD-accuracy of a curve lifted by 3 points is 3 points where the curves overlap in rate
    assert bd_accuracy(RATE, ACCURACY, RATE, ACCURACY + 3.0, method=method) == pytest.approx(3.0, abs=1e-9)


# Published reference values (rate, PSNR in dB): the quality axis is interchangeable with accuracy.
#
# VCEG-M33 example (G. Bjøntegaard, "Calculation of average PSNR differences between RD-curves", VCEG-M33,
# 2001), four points per curve, cubic fit; the reference numbers are those asserted in the example program
# of tbr/bjontegaard_cpp (example.cpp, a port of the ETRO Excel add-in that "complies with VCEG-M33"):
# BD-PSNR 0.800713 dB, BD-rate −13.261773 %.
M33_ANCHOR = ([90.33, 181.03, 332.99, 547.79], [27.95, 31.17, 34.44, 38.11])
M33_TEST = ([127.1719, 186.14, 307.2924, 481.5588], [29.9286, 32.4165, 34.7013, 37.4561])
# The same program's nine-point "ETRO barb512" curves (least-squares cubic): BD-PSNR 0.072297 dB,
# BD-rate −0.903450 %.
ETRO_ANCHOR = (
    [2.99899, 1.99884, 1.49673, 0.99707, 0.745941, 0.596436, 0.495148, 0.29425, 0.244049],
    [48.6681, 43.8357, 41.3982, 38.0124, 35.5122, 33.8673, 32.6658, 29.4505, 28.484],
)
ETRO_TEST = (
    [2.997253, 1.968292, 1.472565, 0.994965, 0.748871, 0.58902, 0.499176, 0.296753, 0.249634],
    [48.5637, 43.7318, 41.2727, 38.0001, 35.6375, 33.9057, 32.8318, 29.6851, 28.8244],
)
# JCTVC-E137 data for the piecewise cubic (pchip) method of the JCT-VC common test conditions sheet, as
# asserted in Netflix/vmaf python/test/bd_rate_calculator_test.py (BDrateCalculatorJCTVCTest, "validated
# against JCTVC-E137"): BD-rate −0.00465215420752807 and −0.018779823450567612 (fractions, i.e. −0.465… %
# and −1.878… %).
E137_1 = (
    ([108048.8736, 61279.976, 33905.6656, 18883.6928], [43.6471, 40.3953, 37.247, 34.2911]),
    ([108061.2784, 61299.9936, 33928.7472, 18910.912], [43.6768, 40.4232, 37.2761, 34.3147]),
)
E137_2 = (
    ([40433.8848, 7622.7456, 2394.488, 1017.6184], [37.5761, 35.3756, 33.8977, 32.0603]),
    ([40370.12, 7587.0024, 2390.0944, 1017.0984], [37.5982, 35.4025, 33.9194, 32.0822]),
)


def test_cubic_matches_vceg_m33_reference():
    assert bd_rate(*M33_ANCHOR, *M33_TEST, method="cubic") == pytest.approx(-13.261773, abs=5e-7)
    assert bd_accuracy(*M33_ANCHOR, *M33_TEST, method="cubic") == pytest.approx(0.800713, abs=5e-7)
    assert bd_rate(*ETRO_ANCHOR, *ETRO_TEST, method="cubic") == pytest.approx(-0.903450, abs=5e-7)
    assert bd_accuracy(*ETRO_ANCHOR, *ETRO_TEST, method="cubic") == pytest.approx(0.072297, abs=5e-7)


def test_pchip_matches_jctvc_e137_reference():
    assert bd_rate(*E137_1[0], *E137_1[1], method="pchip") == pytest.approx(-0.465215420752807, abs=1e-9)
    assert bd_rate(*E137_2[0], *E137_2[1], method="pchip") == pytest.approx(-1.8779823450567612, abs=1e-9)


def test_the_two_methods_differ_where_they_should():
    # on four points the cubic passes through every point but may swing between them, pchip may not:
    # the published values tell them apart
    assert abs(bd_rate(*E137_2[0], *E137_2[1], method="cubic") - -1.8779823450567612) > 0.01
    assert abs(bd_rate(*M33_ANCHOR, *M33_TEST, method="pchip") - -13.261773) > 0.01


def test_curves_that_cannot_be_compared_get_a_named_error():
    with pytest.raises(BDRateError, match="strictly"):
        bd_rate(RATE, [31.0, 52.5, 50.0, 71.2, 74.9], RATE, ACCURACY)
    # BD-accuracy does not need monotonic accuracy
    assert np.isfinite(bd_accuracy(RATE, [31.0, 52.5, 50.0, 71.2, 74.9], RATE, ACCURACY))
    with pytest.raises(BDRateError, match="overlap") as err:
        bd_rate(RATE, ACCURACY, RATE, ACCURACY + 50)
    assert err.value.curve is None
    with pytest.raises(BDRateError, match="at least 2") as err:
        bd_rate(RATE, ACCURACY, [0.1], [50.0])
    assert err.value.curve == "test"
    with pytest.raises(BDRateError, match="same rate"):
        bd_accuracy([0.1, 0.1, 0.2], [1.0, 2.0, 3.0], RATE, ACCURACY)
    with pytest.raises(BDRateError, match="rate ≤ 0"):
        bd_rate([0.0, 0.1], [1.0, 2.0], RATE, ACCURACY)
    with pytest.raises(ValueError, match="method"):
        bd_rate(RATE, ACCURACY, RATE, ACCURACY, method="akima")


def test_monotone_envelope_gives_saturated_accuracy_curves_a_bd_rate():
    from slim_diffusers.evaluation.report import bd_rates, monotone_envelope

    bpp, acc = monotone_envelope(np.array([0.4, 0.1, 0.2, 0.3]), np.array([99.0, 80.0, 99.0, 99.5]))
    assert bpp.tolist() == [0.1, 0.2, 0.3] and acc.tolist() == [80.0, 99.0, 99.5]

    def entries(points):
        return {str(i): {"mean_bpp": b, "top1": {"clf": a}} for i, (b, a) in enumerate(points)}

    anchor = [(0.2, 50.0), (0.4, 70.0), (0.8, 90.0), (1.6, 95.0)]
    # the same curve at half the rate, plus a point that buys nothing with more bits
    test = [(b / 2, a) for b, a in anchor] + [(1.2, 95.0)]
    summary = {"anchor": entries(anchor), "test": entries(test)}
    strict = bd_rates(summary, ["clf"], "anchor")["pchip"]["test"]["clf"]
    assert strict["bd_rate"] is None and "strictly" in strict["bd_rate_error"]
    for method in ("pchip", "cubic"):
        cell = bd_rates(summary, ["clf"], "anchor", envelope=True)[method]["test"]["clf"]
        assert cell["bd_rate"] == pytest.approx(-50.0, abs=1e-9)
