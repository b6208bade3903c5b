/* The receive-side bandwidth estimate: aiortc.rate.RemoteBitrateEstimator in C.
 *
 * aiortc runs it on every inbound video packet and it costs ~11 us a call in
 * Python. This is the same algorithm (InterArrival, OveruseEstimator,
 * OveruseDetector, AimdRateControl, RateCounter) giving the same numbers:
 * every floating-point operation is aiortc's, on doubles, in aiortc's order,
 * and every Python int stays an integer here (int64_t), so that the differential
 * tests in tests/test_fastpath.py can demand equality, not closeness. Where the
 * two kinds of number meet, this follows what CPython does:
 *   - int / int is a correctly rounded quotient (true_divide below), not
 *     (double)a / b, which rounds twice once a passes 2**53;
 *   - round() rounds half to even (rint), int() truncates;
 *   - min()/max() return the first argument unless the second is strictly
 *     smaller/larger (py_min/py_max), which only matters for NaN;
 *   - x ** 2 and pow() call libm's pow(), as CPython does, never x * x (GCC
 *     would rewrite pow(x, 2.0) as x * x, so the exponent is read from a
 *     volatile);
 *   - a division by zero (aiortc's _near_max_rate_increase when the current
 *     bitrate is in (-288000, 0], e.g. after an overuse with empty packets)
 *     stops the update where Python's ZeroDivisionError would.
 *
 * Bounds, where aiortc has none:
 *   - at most RR_REMB_MAX_SSRCS SSRCs are remembered (aiortc's dict grows with
 *     every SSRC ever seen); a new one past that replaces the one seen least
 *     recently. A receiver has two (media and RTX), so the REMB's list is the
 *     same as aiortc's in practice.
 *   - arrival times are within +-2**50 ms (aiortc's clock is near 2**42), so
 *     that no difference or product of them leaves int64; past that the Python
 *     type raises OverflowError and rr_remb_add ignores the packet. An integer
 *     that would still leave int64 (only reachable from such times, or 2**31
 *     packets of 4 GB in one window) is reported the same way, not wrapped.
 *   - no loop is as long as a pause: RateCounter's millisecond-by-millisecond
 *     erase is one memset once it covers the whole window.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rr.h"

#define WINDOW_MS 1000 /* RateCounter(1000, 8000) */
#define RATE_SCALE 8000
#define BURST_DELTA_THRESHOLD_MS 5
#define MAX_ADAPT_OFFSET_MS 15
#define MIN_NUM_DELTAS 60
#define DELTA_COUNTER_MAX 1000
#define MIN_FRAME_PERIOD_HISTORY_LENGTH 60
#define INTER_ARRIVAL_SHIFT 26
#define TIMESTAMP_GROUP_LENGTH_MS 5
/* (TIMESTAMP_GROUP_LENGTH_MS << INTER_ARRIVAL_SHIFT) // 1000 */
#define GROUP_LENGTH (((int64_t)TIMESTAMP_GROUP_LENGTH_MS << INTER_ARRIVAL_SHIFT) / 1000)
#define TIMESTAMP_TO_MS (1000.0 / (double)(1 << INTER_ARRIVAL_SHIFT))
#define FEEDBACK_INTERVAL_MS 500
#define RTT_MS 200
#define ARRIVAL_LIMIT ((int64_t)1 << 50)
#define UINT32_MASK 0xFFFFFFFFll
#define HALF_MOD 0x80000000ll

enum { NORMAL, UNDERUSING, OVERUSING };   /* BandwidthUsage */
enum { HOLD, INCREASE, DECREASE };        /* RateControlState */
enum { ERR_ZERO_DIVISION = -1, ERR_RANGE = -2 };

typedef struct {
    int64_t first_timestamp, last_timestamp, arrival_time, size;
} timestamp_group;

struct rr_remb {
    /* RateCounter: 1 ms buckets over the last second */
    int64_t bucket_count[WINDOW_MS], bucket_value[WINDOW_MS];
    int64_t origin_index, origin_ms, total_count, total_value;
    int has_origin;
    int incoming_bitrate_initialized;
    /* InterArrival */
    timestamp_group current, previous;
    int has_current, has_previous;
    /* OveruseEstimator (a Kalman filter) */
    double e00, e01, e10, e11;
    int64_t num_of_deltas;
    double offset, estimator_previous_offset, slope;
    double ts_delta_hist[MIN_FRAME_PERIOD_HISTORY_LENGTH]; /* a ring, oldest at hist_start */
    int hist_start, hist_len;
    double avg_noise, var_noise;
    /* OveruseDetector */
    int hypothesis;
    int has_detector_update;
    int64_t detector_last_update_ms;
    int64_t overuse_counter;
    int has_overuse_time;
    double overuse_time;
    double detector_previous_offset, threshold;
    /* AimdRateControl */
    int has_avg_max;
    double avg_max_bitrate_kbps, var_max_bitrate_kbps;
    int64_t current_bitrate;
    int current_bitrate_initialized;
    int has_first_throughput_time;
    int64_t first_estimated_throughput_time;
    int has_last_change;
    int64_t last_change_ms;
    int near_max;
    int64_t latest_estimated_throughput;
    int state;
    /* RemoteBitrateEstimator */
    int has_last_update;
    int64_t last_update_ms;
    uint32_t ssrcs[RR_REMB_MAX_SSRCS]; /* in the order first seen, as a dict keeps them */
    uint64_t ssrc_seen[RR_REMB_MAX_SSRCS];
    int ssrc_count;
    uint64_t packets;
};

/* -- CPython's arithmetic ------------------------------------------------------- */

static volatile double two = 2.0; /* see the top: keeps pow(x, 2.0) a call to pow */

static double py_square(double x) { return pow(x, two); }

static double py_min(double a, double b) { return b < a ? b : a; }

static double py_max(double a, double b) { return b > a ? b : a; }

static int bit_length(unsigned __int128 x) {
    uint64_t high = (uint64_t)(x >> 64);
    if (high) return 128 - __builtin_clzll(high);
    uint64_t low = (uint64_t)x;
    return low ? 64 - __builtin_clzll(low) : 0;
}

/* a / b for Python ints: the exact quotient rounded once to the nearest double (ties to
 * even), as CPython's long_true_divide. b is in [1, 1024], which is all this file needs. */
static double true_divide(__int128 a, int64_t b) {
    const __int128 exact = (__int128)1 << 53;
    if (a >= -exact && a <= exact) return (double)(int64_t)a / (double)b;
    unsigned __int128 magnitude = a < 0 ? -(unsigned __int128)a : (unsigned __int128)a;
    /* Shift so that the quotient has 65 bits or more: 53 kept, the rest to round by. */
    int n = bit_length(magnitude);
    int k = n >= 76 ? 0 : 76 - n;
    unsigned __int128 numerator = magnitude << k;
    unsigned __int128 quotient = numerator / (uint64_t)b;
    int sticky = numerator % (uint64_t)b != 0;
    int s = bit_length(quotient) - 53;
    uint64_t mantissa = (uint64_t)(quotient >> s);
    unsigned __int128 rest = quotient & (((unsigned __int128)1 << s) - 1);
    unsigned __int128 half = (unsigned __int128)1 << (s - 1);
    if (rest > half || (rest == half && (sticky || (mantissa & 1)))) mantissa++;
    double d = ldexp((double)mantissa, s - k);
    return a < 0 ? -d : d;
}

/* int(x) (truncation) into *out; ERR_RANGE where an int64_t cannot hold it. */
static int to_int(double x, int64_t *out) {
    if (!(x >= -9223372036854775808.0 && x < 9223372036854775808.0)) return ERR_RANGE;
    *out = (int64_t)x;
    return 0;
}

/* round(x): half to even (rint in the default rounding mode). */
static int round_int(double x, int64_t *out) { return to_int(rint(x), out); }

static int add_int(int64_t a, int64_t b, int64_t *out) {
    return __builtin_add_overflow(a, b, out) ? ERR_RANGE : 0;
}

static int64_t floor_mod(int64_t a, int64_t m) {
    int64_t r = a % m;
    return r < 0 ? r + m : r;
}

/* aiortc.utils.uint32_gt on the raw (unmasked) values, as aiortc calls it. */
static int uint32_gt(int64_t a, int64_t b) {
    return (a < b && b - a > HALF_MOD) || (a > b && a - b < HALF_MOD);
}

/* -- RateCounter ------------------------------------------------------------------ */

static void rate_reset(rr_remb *r) {
    memset(r->bucket_count, 0, sizeof r->bucket_count);
    memset(r->bucket_value, 0, sizeof r->bucket_value);
    r->origin_index = 0;
    r->has_origin = 0;
    r->origin_ms = 0;
    r->total_count = 0;
    r->total_value = 0;
}

static void rate_erase_old(rr_remb *r, int64_t now_ms) {
    int64_t new_origin_ms = now_ms - WINDOW_MS + 1;
    if (r->origin_ms >= new_origin_ms) return;
    int64_t steps = new_origin_ms - r->origin_ms;
    if (steps >= WINDOW_MS) {
        /* aiortc walks every millisecond of the gap; past a window all are empty. */
        memset(r->bucket_count, 0, sizeof r->bucket_count);
        memset(r->bucket_value, 0, sizeof r->bucket_value);
        r->total_count = 0;
        r->total_value = 0;
        r->origin_index = (r->origin_index + steps % WINDOW_MS) % WINDOW_MS;
    } else {
        for (int64_t i = 0; i < steps; i++) {
            int64_t index = r->origin_index;
            r->total_count -= r->bucket_count[index];
            r->total_value -= r->bucket_value[index];
            r->bucket_count[index] = 0;
            r->bucket_value[index] = 0;
            r->origin_index = (index + 1) % WINDOW_MS;
        }
    }
    r->origin_ms = new_origin_ms;
}

/* RateCounter.rate: 1 with *rate, 0 for None, or an error. */
static int rate_rate(rr_remb *r, int64_t now_ms, int64_t *rate) {
    if (!r->has_origin) return 0;
    rate_erase_old(r, now_ms);
    int64_t active_window_size = now_ms - r->origin_ms + 1;
    if (r->total_count > 0 && active_window_size > 1) {
        double quotient = true_divide((__int128)RATE_SCALE * r->total_value, active_window_size);
        if (round_int(quotient, rate) < 0) return ERR_RANGE;
        return 1;
    }
    return 0;
}

static int rate_add(rr_remb *r, int64_t value, int64_t now_ms) {
    if (!r->has_origin) {
        r->has_origin = 1;
        r->origin_ms = now_ms;
    } else {
        rate_erase_old(r, now_ms);
    }
    int64_t index = floor_mod(r->origin_index + now_ms - r->origin_ms, WINDOW_MS);
    if (add_int(r->bucket_value[index], value, &r->bucket_value[index]) < 0 ||
        add_int(r->total_value, value, &r->total_value) < 0)
        return ERR_RANGE;
    r->bucket_count[index] += 1;
    r->total_count += 1;
    return 0;
}

/* -- InterArrival ----------------------------------------------------------------- */

static int belongs_to_burst(const rr_remb *r, int64_t timestamp, int64_t arrival_time) {
    int64_t timestamp_delta = (timestamp - r->current.last_timestamp) & UINT32_MASK;
    /* at most 2**32 * 2**-26 * 1000: an int64_t holds it */
    int64_t timestamp_delta_ms = (int64_t)rint(TIMESTAMP_TO_MS * (double)timestamp_delta);
    int64_t arrival_time_delta = arrival_time - r->current.arrival_time;
    return timestamp_delta_ms == 0 || (arrival_time_delta - timestamp_delta_ms < 0 &&
                                       arrival_time_delta <= BURST_DELTA_THRESHOLD_MS);
}

static int new_timestamp_group(const rr_remb *r, int64_t timestamp, int64_t arrival_time) {
    if (belongs_to_burst(r, timestamp, arrival_time)) return 0;
    return ((timestamp - r->current.first_timestamp) & UINT32_MASK) > GROUP_LENGTH;
}

/* InterArrival.compute_deltas: 1 with *deltas, 0 for None, or an error. */
static int compute_deltas(rr_remb *r, int64_t timestamp, int64_t arrival_time, int64_t size,
                          timestamp_group *deltas) {
    int found = 0;
    if (!r->has_current) {
        r->has_current = 1;
        r->current = (timestamp_group){timestamp, timestamp, 0, 0};
    } else if (((timestamp - r->current.first_timestamp) & UINT32_MASK) >= HALF_MOD) {
        return 0; /* out of order */
    } else if (new_timestamp_group(r, timestamp, arrival_time)) {
        if (r->has_previous) {
            deltas->last_timestamp =
                (r->current.last_timestamp - r->previous.last_timestamp) & UINT32_MASK;
            deltas->arrival_time = r->current.arrival_time - r->previous.arrival_time;
            deltas->size = r->current.size - r->previous.size;
            found = 1;
        }
        r->previous = r->current;
        r->has_previous = 1;
        r->current = (timestamp_group){timestamp, timestamp, 0, 0};
    } else if (uint32_gt(timestamp, r->current.last_timestamp)) {
        r->current.last_timestamp = timestamp;
    }
    if (add_int(r->current.size, size, &r->current.size) < 0) return ERR_RANGE;
    r->current.arrival_time = arrival_time;
    return found;
}

/* -- OveruseEstimator ------------------------------------------------------------- */

static double update_min_frame_period(rr_remb *r, double ts_delta) {
    double min_frame_period = ts_delta;
    if (r->hist_len >= MIN_FRAME_PERIOD_HISTORY_LENGTH) {
        r->hist_start = (r->hist_start + 1) % MIN_FRAME_PERIOD_HISTORY_LENGTH;
        r->hist_len--;
    }
    for (int i = 0; i < r->hist_len; i++) {
        double old = r->ts_delta_hist[(r->hist_start + i) % MIN_FRAME_PERIOD_HISTORY_LENGTH];
        min_frame_period = py_min(old, min_frame_period);
    }
    r->ts_delta_hist[(r->hist_start + r->hist_len) % MIN_FRAME_PERIOD_HISTORY_LENGTH] = ts_delta;
    r->hist_len++;
    return min_frame_period;
}

static void update_noise_estimate(rr_remb *r, double residual, double ts_delta) {
    double alpha = 0.01;
    if (r->num_of_deltas > 10 * 30) alpha = 0.002;
    double beta = pow(1 - alpha, ts_delta * 30.0 / 1000.0);
    r->avg_noise = beta * r->avg_noise + (1 - beta) * residual;
    r->var_noise = beta * r->var_noise + (1 - beta) * py_square(r->avg_noise - residual);
    if (r->var_noise < 1) r->var_noise = 1;
}

static void estimator_update(rr_remb *r, int64_t time_delta_ms, double timestamp_delta_ms,
                             int64_t size_delta, int current_hypothesis) {
    double min_frame_period = update_min_frame_period(r, timestamp_delta_ms);
    double t_ts_delta = (double)time_delta_ms - timestamp_delta_ms;
    double h0 = (double)size_delta, h1 = 1.0;

    r->num_of_deltas = r->num_of_deltas + 1 < DELTA_COUNTER_MAX ? r->num_of_deltas + 1
                                                                : DELTA_COUNTER_MAX;
    r->e00 += 1e-13;
    r->e11 += 1e-3;
    if ((current_hypothesis == OVERUSING && r->offset < r->estimator_previous_offset) ||
        (current_hypothesis == UNDERUSING && r->offset > r->estimator_previous_offset))
        r->e11 += 10 * 1e-3;

    double eh0 = r->e00 * h0 + r->e01 * h1;
    double eh1 = r->e10 * h0 + r->e11 * h1;

    double residual = t_ts_delta - r->slope * h0 - r->offset;
    if (current_hypothesis == NORMAL) {
        double max_residual = 3.0 * sqrt(r->var_noise);
        if (fabs(residual) < max_residual)
            update_noise_estimate(r, residual, min_frame_period);
        else
            update_noise_estimate(r, residual < 0 ? -max_residual : max_residual,
                                  min_frame_period);
    }

    double denom = r->var_noise + h0 * eh0 + h1 * eh1;
    double k0 = eh0 / denom, k1 = eh1 / denom;
    double ikh00 = 1.0 - k0 * h0, ikh01 = -k0 * h1;
    double ikh10 = -k1 * h0, ikh11 = 1.0 - k1 * h1;
    double e00 = r->e00, e01 = r->e01;
    r->e00 = e00 * ikh00 + r->e10 * ikh01;
    r->e01 = e01 * ikh00 + r->e11 * ikh01;
    r->e10 = e00 * ikh10 + r->e10 * ikh11;
    r->e11 = e01 * ikh10 + r->e11 * ikh11;

    r->estimator_previous_offset = r->offset;
    r->slope += k0 * residual;
    r->offset += k1 * residual;
}

/* -- OveruseDetector ---------------------------------------------------------------- */

static void update_threshold(rr_remb *r, double modified_offset, int64_t now_ms) {
    if (!r->has_detector_update) {
        r->has_detector_update = 1;
        r->detector_last_update_ms = now_ms;
    }
    if (fabs(modified_offset) > r->threshold + MAX_ADAPT_OFFSET_MS) {
        r->detector_last_update_ms = now_ms;
        return;
    }
    double k = fabs(modified_offset) < r->threshold ? 0.039 : 0.0087; /* k_down, k_up */
    int64_t time_delta_ms = now_ms - r->detector_last_update_ms;
    if (time_delta_ms > 100) time_delta_ms = 100;
    r->threshold += k * (fabs(modified_offset) - r->threshold) * (double)time_delta_ms;
    r->threshold = py_max(6, py_min(r->threshold, 600));
    r->detector_last_update_ms = now_ms;
}

static void detect(rr_remb *r, double offset, double timestamp_delta_ms, int64_t num_of_deltas,
                   int64_t now_ms) {
    if (num_of_deltas < 2) return; /* NORMAL, with the hypothesis left as it is */
    double t = (double)(num_of_deltas < MIN_NUM_DELTAS ? num_of_deltas : MIN_NUM_DELTAS) * offset;
    if (t > r->threshold) {
        if (!r->has_overuse_time) {
            r->has_overuse_time = 1;
            r->overuse_time = timestamp_delta_ms / 2;
        } else {
            r->overuse_time += timestamp_delta_ms;
        }
        r->overuse_counter += 1;
        if (r->overuse_time > 10 && r->overuse_counter > 1 &&
            offset >= r->detector_previous_offset) {
            r->overuse_counter = 0;
            r->overuse_time = 0;
            r->hypothesis = OVERUSING;
        }
    } else if (t < -r->threshold) {
        r->overuse_counter = 0;
        r->has_overuse_time = 0;
        r->hypothesis = UNDERUSING;
    } else {
        r->overuse_counter = 0;
        r->has_overuse_time = 0;
        r->hypothesis = NORMAL;
    }
    r->detector_previous_offset = offset;
    update_threshold(r, t, now_ms);
}

/* -- AimdRateControl ---------------------------------------------------------------- */

static int near_max_rate_increase(const rr_remb *r, int64_t *increase) {
    double bits_per_frame = true_divide(r->current_bitrate, 30);
    double packets_per_frame = ceil(bits_per_frame / (8 * 1200));
    if (packets_per_frame == 0) return ERR_ZERO_DIVISION; /* "float division by zero" */
    double avg_packet_size_bits = bits_per_frame / packets_per_frame;
    int64_t response_time = RTT_MS + 100;
    int64_t rate;
    if (to_int((avg_packet_size_bits * 1000) / (double)response_time, &rate) < 0)
        return ERR_RANGE;
    *increase = rate > 4000 ? rate : 4000;
    return 0;
}

static int additive_rate_increase(const rr_remb *r, int64_t last_ms, int64_t now_ms,
                                  int64_t *increase) {
    int64_t rate;
    int error = near_max_rate_increase(r, &rate);
    if (error < 0) return error;
    return to_int(true_divide((__int128)(now_ms - last_ms) * rate, 1000), increase);
}

static int multiplicative_rate_increase(const rr_remb *r, int64_t new_bitrate, int64_t now_ms,
                                        int64_t *increase) {
    double alpha = 1.08;
    if (r->has_last_change) {
        int64_t elapsed_ms = now_ms - r->last_change_ms;
        if (elapsed_ms > 1000) elapsed_ms = 1000;
        alpha = pow(alpha, true_divide(elapsed_ms, 1000));
    }
    double grown = (alpha - 1) * (double)new_bitrate;
    if (1000 > grown) {
        *increase = 1000;
        return 0;
    }
    return to_int(grown, increase);
}

static int clamp_bitrate(const rr_remb *r, int64_t new_bitrate, int64_t estimated_throughput,
                         int64_t *clamped) {
    int64_t max_bitrate;
    if (to_int(1.5 * (double)estimated_throughput, &max_bitrate) < 0 ||
        add_int(max_bitrate, 10000, &max_bitrate) < 0)
        return ERR_RANGE;
    if (r->current_bitrate > max_bitrate) max_bitrate = r->current_bitrate;
    *clamped = max_bitrate < new_bitrate ? max_bitrate : new_bitrate;
    return 0;
}

static void update_max_throughput_estimate(rr_remb *r, double estimated_throughput_kbps) {
    double alpha = 0.05;
    if (!r->has_avg_max) {
        r->has_avg_max = 1;
        r->avg_max_bitrate_kbps = estimated_throughput_kbps;
    } else {
        r->avg_max_bitrate_kbps =
            (1 - alpha) * r->avg_max_bitrate_kbps + alpha * estimated_throughput_kbps;
    }
    double norm = py_max(1, r->avg_max_bitrate_kbps);
    r->var_max_bitrate_kbps =
        (1 - alpha) * r->var_max_bitrate_kbps +
        alpha * py_square(r->avg_max_bitrate_kbps - estimated_throughput_kbps) / norm;
    r->var_max_bitrate_kbps = py_max(0.4, py_min(r->var_max_bitrate_kbps, 2.5));
}

/* AimdRateControl.update: 1 with *bitrate, 0 for None, or an error. */
static int rate_control_update(rr_remb *r, int bandwidth_usage, int has_throughput,
                               int64_t estimated_throughput, int64_t now_ms, int64_t *bitrate) {
    if (!r->current_bitrate_initialized && has_throughput) {
        if (!r->has_first_throughput_time) {
            r->has_first_throughput_time = 1;
            r->first_estimated_throughput_time = now_ms;
        } else if (now_ms - r->first_estimated_throughput_time > 3000) {
            r->current_bitrate = estimated_throughput;
            r->current_bitrate_initialized = 1;
        }
    }
    /* wait for initialisation or overuse */
    if (!r->current_bitrate_initialized && bandwidth_usage != OVERUSING) return 0;

    if (bandwidth_usage == NORMAL && r->state == HOLD) {
        r->has_last_change = 1;
        r->last_change_ms = now_ms;
        r->state = INCREASE;
    } else if (bandwidth_usage == OVERUSING) {
        r->state = DECREASE;
    } else if (bandwidth_usage == UNDERUSING) {
        r->state = HOLD;
    }

    int64_t new_bitrate = r->current_bitrate;
    if (has_throughput)
        r->latest_estimated_throughput = estimated_throughput;
    else
        estimated_throughput = r->latest_estimated_throughput;
    double estimated_throughput_kbps = true_divide(estimated_throughput, 1000);

    if (r->state == INCREASE) {
        /* a throughput well above the max so far: forget that max */
        if (r->has_avg_max) {
            double sigma_kbps = sqrt(r->var_max_bitrate_kbps * r->avg_max_bitrate_kbps);
            if (estimated_throughput_kbps >= r->avg_max_bitrate_kbps + 3 * sigma_kbps) {
                r->near_max = 0;
                r->has_avg_max = 0;
            }
        }
        int64_t increase;
        int error = r->near_max
                        ? additive_rate_increase(r, r->last_change_ms, now_ms, &increase)
                        : multiplicative_rate_increase(r, new_bitrate, now_ms, &increase);
        if (error < 0 || add_int(new_bitrate, increase, &new_bitrate) < 0)
            return error < 0 ? error : ERR_RANGE;
        r->has_last_change = 1;
        r->last_change_ms = now_ms;
    } else if (r->state == DECREASE) {
        if (r->has_avg_max) {
            double sigma_kbps = sqrt(r->var_max_bitrate_kbps * r->avg_max_bitrate_kbps);
            if (estimated_throughput_kbps < r->avg_max_bitrate_kbps - 3 * sigma_kbps)
                r->has_avg_max = 0;
        }
        update_max_throughput_estimate(r, estimated_throughput_kbps);
        r->near_max = 1;
        if (round_int(0.85 * (double)estimated_throughput, &new_bitrate) < 0) return ERR_RANGE;
        r->has_last_change = 1;
        r->last_change_ms = now_ms;
        r->state = HOLD;
    }

    if (clamp_bitrate(r, new_bitrate, estimated_throughput, &r->current_bitrate) < 0)
        return ERR_RANGE;
    *bitrate = r->current_bitrate;
    return 1;
}

/* -- RemoteBitrateEstimator --------------------------------------------------------- */

static void note_ssrc(rr_remb *r, uint32_t ssrc) {
    uint64_t seen = ++r->packets;
    int oldest = 0;
    for (int i = 0; i < r->ssrc_count; i++) {
        if (r->ssrcs[i] == ssrc) {
            r->ssrc_seen[i] = seen;
            return;
        }
        if (r->ssrc_seen[i] < r->ssrc_seen[oldest]) oldest = i;
    }
    if (r->ssrc_count == RR_REMB_MAX_SSRCS) {
        /* full: forget the one seen least recently, keeping the others' order */
        memmove(&r->ssrcs[oldest], &r->ssrcs[oldest + 1],
                (size_t)(r->ssrc_count - oldest - 1) * sizeof r->ssrcs[0]);
        memmove(&r->ssrc_seen[oldest], &r->ssrc_seen[oldest + 1],
                (size_t)(r->ssrc_count - oldest - 1) * sizeof r->ssrc_seen[0]);
        r->ssrc_count--;
    }
    r->ssrcs[r->ssrc_count] = ssrc;
    r->ssrc_seen[r->ssrc_count] = seen;
    r->ssrc_count++;
}

rr_remb *rr_remb_new(void) {
    rr_remb *r = calloc(1, sizeof(rr_remb));
    if (r == NULL) return NULL;
    r->incoming_bitrate_initialized = 1;
    r->e00 = 100.0;
    r->e11 = 0.1;
    r->slope = 1.0 / 64;
    r->var_noise = 50.0;
    r->hypothesis = NORMAL;
    r->threshold = 12.5;
    r->var_max_bitrate_kbps = 0.4;
    r->current_bitrate = 30000000;
    r->latest_estimated_throughput = 30000000;
    r->state = HOLD;
    return r;
}

void rr_remb_free(rr_remb *remb) { free(remb); }

/* RemoteBitrateEstimator.add: 1 with *bitrate (the ssrcs are remb's), 0 for None, or an
 * error (ERR_ZERO_DIVISION where aiortc raises ZeroDivisionError, ERR_RANGE past int64). */
static int remb_add(rr_remb *r, int64_t arrival_time_ms, uint32_t abs_send_time,
                    uint32_t payload_size, uint32_t ssrc, int64_t *bitrate) {
    int64_t timestamp = (int64_t)abs_send_time << 8;
    note_ssrc(r, ssrc);

    int64_t rate;
    int measured = rate_rate(r, arrival_time_ms, &rate);
    if (measured < 0) return measured;
    if (measured) {
        r->incoming_bitrate_initialized = 1;
    } else if (r->incoming_bitrate_initialized) {
        rate_reset(r);
        r->incoming_bitrate_initialized = 0;
    }
    if (rate_add(r, payload_size, arrival_time_ms) < 0) return ERR_RANGE;

    timestamp_group deltas;
    int found = compute_deltas(r, timestamp, arrival_time_ms, payload_size, &deltas);
    if (found < 0) return found;
    if (found) {
        double timestamp_delta_ms = (double)deltas.last_timestamp * TIMESTAMP_TO_MS;
        estimator_update(r, deltas.arrival_time, timestamp_delta_ms, deltas.size, r->hypothesis);
        detect(r, r->offset, timestamp_delta_ms, r->num_of_deltas, arrival_time_ms);
    }

    if (!r->has_last_update || arrival_time_ms - r->last_update_ms > FEEDBACK_INTERVAL_MS ||
        r->hypothesis == OVERUSING) {
        measured = rate_rate(r, arrival_time_ms, &rate);
        if (measured < 0) return measured;
        int64_t target;
        int updated =
            rate_control_update(r, r->hypothesis, measured, rate, arrival_time_ms, &target);
        if (updated < 0) return updated;
        if (updated) {
            r->has_last_update = 1;
            r->last_update_ms = arrival_time_ms;
            *bitrate = target;
            return 1;
        }
    }
    return 0;
}

int rr_remb_add(rr_remb *remb, uint32_t abs_send_time, int64_t arrival_time_ms,
                uint32_t payload_size, uint32_t ssrc, uint64_t *bitrate, uint32_t *ssrcs,
                int *count, int capacity) {
    *count = 0;
    if (arrival_time_ms < -ARRIVAL_LIMIT || arrival_time_ms > ARRIVAL_LIMIT) return 0;
    int64_t target;
    /* Where aiortc would raise (and so send nothing), or the estimate is negative (only
     * from arrival times going back: aiortc's pack_remb_fci would raise), no REMB. */
    if (remb_add(remb, arrival_time_ms, abs_send_time, payload_size, ssrc, &target) != 1 ||
        target < 0)
        return 0;
    *bitrate = (uint64_t)target;
    int n = remb->ssrc_count < capacity ? remb->ssrc_count : capacity;
    for (int i = 0; i < n; i++) ssrcs[i] = remb->ssrcs[i];
    *count = n > 0 ? n : 0;
    return 1;
}

/* -- the Python type: rtc._fastpath.RembEstimator ------------------------------------ */

typedef struct {
    PyObject_HEAD rr_remb *remb;
} RembObject;

/* aiortc's names and order: add(arrival_time_ms, abs_send_time, payload_size, ssrc). */
static const char *const add_names[4] = {"arrival_time_ms", "abs_send_time", "payload_size",
                                         "ssrc"};
static PyObject *add_keywords[4];

static PyObject *Remb_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "RembEstimator() takes no arguments");
        return NULL;
    }
    RembObject *self = (RembObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->remb = rr_remb_new();
    if (self->remb == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void Remb_dealloc(RembObject *self) {
    rr_remb_free(self->remb);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse_uint32(PyObject *value, const char *name, uint32_t *out) {
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        v = 0xFFFFFFFFFFFFFFFFull; /* negative or huge: the same message below */
    }
    if (v > 0xFFFFFFFFull) {
        PyErr_Format(PyExc_OverflowError, "%s must be in [0, 2**32)", name);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static PyObject *Remb_add(RembObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames) {
    PyObject *values[4] = {NULL, NULL, NULL, NULL};
    if (nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "add() takes at most 4 arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) values[i] = args[i];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t j = 0; j < nkw; j++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, j);
        int index = -1;
        for (int i = 0; i < 4 && index < 0; i++)
            if (name == add_keywords[i]) index = i; /* interned: the usual case */
        for (int i = 0; i < 4 && index < 0; i++)
            if (PyUnicode_Compare(name, add_keywords[i]) == 0) index = i;
        if (PyErr_Occurred()) return NULL;
        if (index < 0) {
            PyErr_Format(PyExc_TypeError, "add() got an unexpected keyword argument '%U'", name);
            return NULL;
        }
        if (values[index] != NULL) {
            PyErr_Format(PyExc_TypeError, "add() got multiple values for argument '%s'",
                         add_names[index]);
            return NULL;
        }
        values[index] = args[nargs + j];
    }
    for (int i = 0; i < 4; i++) {
        if (values[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "add() missing required argument '%s'", add_names[i]);
            return NULL;
        }
    }
    if (!PyLong_Check(values[0])) {
        PyErr_SetString(PyExc_TypeError, "arrival_time_ms must be an int");
        return NULL;
    }
    int overflow;
    long long arrival_time_ms = PyLong_AsLongLongAndOverflow(values[0], &overflow);
    if (arrival_time_ms == -1 && PyErr_Occurred()) return NULL;
    if (overflow || arrival_time_ms < -ARRIVAL_LIMIT || arrival_time_ms > ARRIVAL_LIMIT) {
        PyErr_SetString(PyExc_OverflowError, "arrival_time_ms must be within +-2**50");
        return NULL;
    }
    uint32_t abs_send_time, payload_size, ssrc;
    if (parse_uint32(values[1], add_names[1], &abs_send_time) < 0 ||
        parse_uint32(values[2], add_names[2], &payload_size) < 0 ||
        parse_uint32(values[3], add_names[3], &ssrc) < 0)
        return NULL;

    int64_t bitrate;
    int result = remb_add(self->remb, arrival_time_ms, abs_send_time, payload_size, ssrc, &bitrate);
    if (result == ERR_ZERO_DIVISION) {
        PyErr_SetString(PyExc_ZeroDivisionError, "float division by zero");
        return NULL;
    }
    if (result == ERR_RANGE) {
        PyErr_SetString(PyExc_OverflowError, "bitrate estimate out of int64 range");
        return NULL;
    }
    if (result == 0) Py_RETURN_NONE;
    PyObject *ssrcs = PyList_New(self->remb->ssrc_count);
    if (ssrcs == NULL) return NULL;
    for (int i = 0; i < self->remb->ssrc_count; i++) {
        PyObject *item = PyLong_FromUnsignedLong(self->remb->ssrcs[i]);
        if (item == NULL) {
            Py_DECREF(ssrcs);
            return NULL;
        }
        PyList_SET_ITEM(ssrcs, i, item);
    }
    PyObject *rate = PyLong_FromLongLong(bitrate);
    if (rate == NULL) {
        Py_DECREF(ssrcs);
        return NULL;
    }
    PyObject *pair = PyTuple_Pack(2, rate, ssrcs);
    Py_DECREF(rate);
    Py_DECREF(ssrcs);
    return pair;
}

/* rr_remb_add as inbound.c calls it, for the tests: (bitrate, ssrcs) or None. */
static PyObject *Remb_c_add(RembObject *self, PyObject *args) {
    unsigned int abs_send_time, payload_size, ssrc;
    long long arrival_time_ms;
    int capacity;
    if (!PyArg_ParseTuple(args, "ILIIi", &abs_send_time, &arrival_time_ms, &payload_size, &ssrc,
                          &capacity))
        return NULL;
    if (capacity < 0 || capacity > RR_REMB_MAX_SSRCS) {
        PyErr_SetString(PyExc_ValueError, "capacity must be in [0, 16]");
        return NULL;
    }
    uint64_t bitrate;
    uint32_t ssrcs[RR_REMB_MAX_SSRCS];
    int count;
    if (!rr_remb_add(self->remb, abs_send_time, arrival_time_ms, payload_size, ssrc, &bitrate,
                     ssrcs, &count, capacity))
        Py_RETURN_NONE;
    PyObject *list = PyList_New(count);
    if (list == NULL) return NULL;
    for (int i = 0; i < count; i++) {
        PyObject *item = PyLong_FromUnsignedLong(ssrcs[i]);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return Py_BuildValue("(KN)", (unsigned long long)bitrate, list);
}

static PyMethodDef Remb_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Remb_add, METH_FASTCALL | METH_KEYWORDS,
     "add(arrival_time_ms, abs_send_time, payload_size, ssrc) -> (bitrate, ssrcs) | None: "
     "aiortc.rate.RemoteBitrateEstimator.add; a tuple when a REMB should be sent now."},
    {"_c_add", (PyCFunction)Remb_c_add, METH_VARARGS,
     "_c_add(abs_send_time, arrival_time_ms, payload_size, ssrc, capacity): rr_remb_add, "
     "the C entry point, for the tests."},
    {NULL}};

static PyTypeObject RembType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.RembEstimator",
    .tp_basicsize = sizeof(RembObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "aiortc.rate.RemoteBitrateEstimator in C: the same estimates, at most "
              "16 SSRCs remembered.",
    .tp_new = Remb_new,
    .tp_dealloc = (destructor)Remb_dealloc,
    .tp_methods = Remb_methods,
};

int rr_register_remb(PyObject *module) {
    for (int i = 0; i < 4; i++) {
        if (add_keywords[i] == NULL) {
            add_keywords[i] = PyUnicode_InternFromString(add_names[i]);
            if (add_keywords[i] == NULL) return -1;
        }
    }
    if (PyType_Ready(&RembType) < 0) return -1;
    Py_INCREF(&RembType);
    if (PyModule_AddObject(module, "RembEstimator", (PyObject *)&RembType) < 0) {
        Py_DECREF(&RembType);
        return -1;
    }
    return 0;
}
