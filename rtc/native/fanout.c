/* A source's fan-out to its subscribers, in C: no Python per forwarded packet.
 *
 * Lane: one Subscriber with its PacketSender (rtc/subscriber.py,
 * rtc/aiortc_seam.py). It holds what both keep per packet: keyframe gating,
 * the sequence / timestamp / VP8 picture id rewrite that makes one continuous
 * stream across partners, the sender's numbering, its counters for aiortc's
 * sender reports, and the NACK history. The arithmetic is Subscriber.push_packet's
 * and PacketSender.send's, line for line (tests/test_fastpath.py feeds both the
 * same packets and compares the bytes); Python keeps every decision that is not
 * per packet (which codec, when to start, where to send, readiness).
 *
 * Fanout: one per PacketSource (rtc/source.py). It counts the source's packets,
 * finds keyframes (rtc.rtp.starts_keyframe), hands each packet to its active
 * lanes, and builds frames for moderation with rtc/native/frames.c when that
 * assembles the codec. It tells its caller when Python must see a packet too:
 * Python sinks (a pipe, a Python-path subscriber), a lane Python has not
 * activated yet, or frames wanted that C does not build. A member of its lanes
 * may also be a PipeOut (rtc/native/pipe_out.c): a stream sent to another node.
 */
#include "rr.h"

#include <math.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>
#include <time.h>

/* As rtc.aiortc_seam.SEND_HISTORY: the NACK history's length. */
#define SEND_HISTORY 512
/* As rtc.subscriber.MIN_SWITCH_GAP, in seconds. */
#define MIN_SWITCH_GAP 0.02
/* NTP counts from 1900, Unix time from 1970 (rtc.rtp.NTP_UNIX_OFFSET). */
#define NTP_UNIX_OFFSET 2208988800.0
/* Completed audio frames handed to Python at once (video frames go one by one). */
#define FRAME_BATCH 16
#define FRAME_BATCH_SECONDS 0.2
/* The longest pause continue_timeline counts, in seconds (ten years). */
#define MAX_GAP 3.2e8

/* -- clocks ------------------------------------------------------------------ */

/* Tests fix both clocks (freeze_clock) to compare with the Python path. */
static double frozen_monotonic = NAN;
static double frozen_wall = NAN;

/* asyncio's loop.time(): time.monotonic(), CLOCK_MONOTONIC. */
static double monotonic_now(void) {
    if (!isnan(frozen_monotonic)) return frozen_monotonic;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9;
}

/* rtc.rtp.ntp_now(): time.time() as a 64-bit NTP timestamp, the same double arithmetic. */
static uint64_t ntp_now(void) {
    double wall = frozen_wall;
    if (isnan(wall)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        wall = (double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9;
    }
    return (uint64_t)((wall + NTP_UNIX_OFFSET) * 4294967296.0);
}

/* -- payloads ---------------------------------------------------------------- */

/* rtc.rtp.read_vp8_picture_id: the picture id, or -1 when the descriptor has none. */
static int32_t read_vp8_picture_id(const uint8_t *p, size_t size) {
    if (size < 3 || !(p[0] & 0x80) || !(p[1] & 0x80)) return -1;
    if (p[2] & 0x80) return size >= 4 ? (int32_t)(((p[2] & 0x7F) << 8) | p[3]) : -1;
    return p[2] & 0x7F;
}

/* rtc.rtp.vp8_descriptor_size: -1 where Python says None. */
static Py_ssize_t vp8_descriptor_size(const uint8_t *p, size_t n) {
    if (n == 0) return -1;
    size_t size = 1;
    if (p[0] & 0x80) {
        if (n < 2) return -1;
        uint8_t extensions = p[1];
        size = 2;
        if (extensions & 0x80) {
            if (n <= size) return -1;
            size += (p[size] & 0x80) ? 2 : 1;
        }
        if (extensions & 0x40) size += 1;
        if (extensions & 0x30) size += 1;
    }
    return size < n ? (Py_ssize_t)size : -1;
}

enum { CODEC_OTHER = 0, CODEC_VP8 = 1, CODEC_H264 = 2 };

/* rtc.rtp.starts_keyframe. */
static int starts_keyframe(int codec, const uint8_t *p, size_t n) {
    if (codec == CODEC_VP8) {
        if (n < 2 || !(p[0] & 0x10) || (p[0] & 0x07)) return 0;
        Py_ssize_t size = vp8_descriptor_size(p, n);
        return size >= 0 && !(p[size] & 0x01);
    }
    if (codec == CODEC_H264) {
        if (n == 0) return 0;
        int nal_type = p[0] & 0x1F;
        if (nal_type == 5 || nal_type == 7) return 1;
        if (nal_type == 24) {
            size_t position = 1;
            while (position + 2 < n) {
                size_t size = ((size_t)p[position] << 8) | p[position + 1];
                int inner = p[position + 2] & 0x1F;
                if (inner == 5 || inner == 7) return 1;
                position += 2 + size;
            }
            return 0;
        }
        if (nal_type == 28 && n >= 2) return (p[1] & 0x80) && (p[1] & 0x1F) == 5;
        return 0;
    }
    return 1;
}

/* -- Lane --------------------------------------------------------------------- */

typedef struct {
    uint8_t *data; /* owned; grows to the largest payload stored here */
    size_t size, capacity;
    uint32_t timestamp;
    int32_t picture_id;
    uint16_t sequence_number;
    char used, marker;
} HistoryEntry;

typedef struct {
    PyObject_HEAD
    /* Subscriber: Python sets `active` once it has checked the codecs meet, the
     * output is ready and nothing is decoded; until then Python sees the packets. */
    char active, video, vp8, need_start;
    int clock;
    uint16_t first_sequence, sequence_offset;
    uint32_t timestamp_in;
    int64_t timestamp_out;
    int32_t picture_id_offset, next_picture_id; /* -1: None */
    char has_last_out;
    int64_t last_out;
    double last_out_at;
    unsigned long long forwarded, dropped;
    PyObject *on_keyframe_wanted; /* Subscriber._request_keyframe */
    /* PacketSender */
    char ready;
    uint16_t sequence_number, rtx_sequence_number;
    int payload_type, rtx_payload_type; /* rtx: -1 when none */
    PyObject *writer, *rtx_writer, *srtp; /* HeaderWriter, HeaderWriter or None, SrtpContext */
    PyObject *destination;                /* Destination: our own sendto(2), or None */
    PyObject *transmit;                   /* where sealed bytes go without a destination */
    unsigned long long packets, octets, ntp, send_dropped, send_errors, retransmitted;
    uint32_t rtp_timestamp;
    HistoryEntry history[SEND_HISTORY];
} LaneObject;

static PyTypeObject LaneType;

static int Lane_traverse(LaneObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->on_keyframe_wanted);
    Py_VISIT(self->writer);
    Py_VISIT(self->rtx_writer);
    Py_VISIT(self->srtp);
    Py_VISIT(self->destination);
    Py_VISIT(self->transmit);
    return 0;
}

static int Lane_clear(LaneObject *self) {
    Py_CLEAR(self->on_keyframe_wanted);
    Py_CLEAR(self->writer);
    Py_CLEAR(self->rtx_writer);
    Py_CLEAR(self->srtp);
    Py_CLEAR(self->destination);
    Py_CLEAR(self->transmit);
    self->ready = 0;
    return 0;
}

static void Lane_dealloc(LaneObject *self) {
    PyObject_GC_UnTrack(self);
    Lane_clear(self);
    for (int i = 0; i < SEND_HISTORY; i++) PyMem_Free(self->history[i].data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Lane_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    (void)args, (void)kwargs;
    LaneObject *self = (LaneObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->need_start = 1;
    self->clock = 90000;
    self->video = 1;
    self->picture_id_offset = -1;
    self->next_picture_id = -1;
    self->rtx_payload_type = -1;
    return (PyObject *)self;
}

static int keyframe_wanted(LaneObject *self) {
    if (self->on_keyframe_wanted == NULL || self->on_keyframe_wanted == Py_None) return 0;
    PyObject *result = PyObject_CallNoArgs(self->on_keyframe_wanted);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* Sends `size` sealed bytes: by our own sendto(2), or through Python's transmit.
 * 1 sent, 0 not, -1 with a Python exception. */
static int lane_transmit(LaneObject *self, const uint8_t *data, Py_ssize_t size) {
    if (size < 0) {
        if (self->destination != NULL) self->send_errors++;
        return 0;
    }
    if (self->destination != NULL) {
        if (rr_destination_send(self->destination, data, (size_t)size) == 0) return 1;
        self->send_errors++;
        return 0;
    }
    if (self->transmit == NULL || self->transmit == Py_None) return 0;
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)data, size);
    if (bytes == NULL) return -1;
    PyObject *result = PyObject_CallOneArg(self->transmit, bytes);
    Py_DECREF(bytes);
    if (result == NULL) return -1;
    int sent = PyObject_IsTrue(result);
    Py_DECREF(result);
    return sent;
}

/* PacketSender.send: 1 sent, 0 not, -1 with a Python exception. */
static int lane_send(LaneObject *self, const uint8_t *payload, size_t size, int marker,
                     uint32_t timestamp, int sequence_number, int32_t picture_id) {
    if (!self->ready || self->writer == NULL || self->srtp == NULL) return 0;
    uint16_t sequence = sequence_number < 0 ? self->sequence_number : (uint16_t)sequence_number;
    if ((uint16_t)(sequence - self->sequence_number) < 0x8000)
        self->sequence_number = (uint16_t)(sequence + 1);
    uint64_t ntp = ntp_now();
    uint8_t packet[RR_MAX_PACKET];
    Py_ssize_t sealed =
        rr_writer_seal(self->writer, self->srtp, self->payload_type, sequence, timestamp, marker,
                       ntp, payload, size, picture_id, -1, packet, sizeof packet);
    int sent = lane_transmit(self, packet, sealed);
    if (sent <= 0) {
        if (sent == 0) self->send_dropped++;
        return sent;
    }
    /* Kept for NACKs: the payload as given, the picture id written again on resending. */
    HistoryEntry *entry = &self->history[sequence % SEND_HISTORY];
    if (entry->capacity < size) {
        size_t capacity = size < 256 ? 256 : size;
        uint8_t *data = PyMem_Realloc(entry->data, capacity);
        if (data == NULL) {
            entry->used = 0;
            goto counted;
        }
        entry->data = data;
        entry->capacity = capacity;
    }
    if (size) memcpy(entry->data, payload, size);
    entry->size = size;
    entry->sequence_number = sequence;
    entry->timestamp = timestamp;
    entry->marker = (char)marker;
    entry->picture_id = picture_id;
    entry->used = 1;
counted:
    self->packets++;
    self->ntp = ntp;
    self->rtp_timestamp = timestamp;
    self->octets += size;
    return 1;
}

/* Signed addition without C's undefined overflow (values Python set may be anything). */
static int64_t wrapping_add(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }

/* Subscriber._continue_timeline. */
static int64_t continue_timeline(LaneObject *self) {
    if (!self->has_last_out) return 0;
    double gap = monotonic_now() - self->last_out_at;
    if (!(gap >= MIN_SWITCH_GAP)) gap = MIN_SWITCH_GAP;
    /* Python's ints do not overflow; ours must not either (a pause of years is one). */
    if (gap > MAX_GAP) gap = MAX_GAP;
    /* Python's round(): half to even, which nearbyint does in the default mode. */
    return wrapping_add(self->last_out, (int64_t)nearbyint(gap * self->clock));
}

/* Subscriber._timestamp. */
static int64_t rewrite_timestamp(LaneObject *self, uint32_t timestamp) {
    int64_t delta = (uint32_t)(timestamp - self->timestamp_in);
    if (delta >= 0x80000000LL) delta -= 0x100000000LL;
    int64_t out = wrapping_add(self->timestamp_out, delta);
    if (delta > 0) {
        self->timestamp_in = timestamp;
        self->timestamp_out = out;
        self->last_out = out;
        self->has_last_out = 1;
        self->last_out_at = monotonic_now();
    } else if (!self->has_last_out) {
        self->last_out = out;
        self->has_last_out = 1;
        self->last_out_at = monotonic_now();
    }
    return out;
}

/* Subscriber._renumber_picture. */
static int32_t renumber_picture(LaneObject *self, const uint8_t *payload, size_t size) {
    int32_t picture_id = read_vp8_picture_id(payload, size);
    if (picture_id < 0) return -1;
    int32_t offset = self->picture_id_offset;
    if (offset < 0) {
        int32_t following = self->next_picture_id;
        offset = following < 0 ? 0 : (following - picture_id) & 0x7FFF;
        self->picture_id_offset = offset;
    }
    int32_t out = (picture_id + offset) & 0x7FFF;
    int32_t following = self->next_picture_id;
    if (following < 0 || ((out - following) & 0x7FFF) < 0x4000)
        self->next_picture_id = (out + 1) & 0x7FFF;
    return offset == 0 ? -1 : out;
}

/* Subscriber.push_packet past its Python checks. 0, or -1 with a Python exception. */
static int lane_forward(LaneObject *self, uint16_t sequence_number, uint32_t timestamp,
                        int marker, const uint8_t *payload, size_t size, int keyframe) {
    if (!self->ready) return 0;
    if (self->need_start) {
        if (self->video && !keyframe) {
            /* Undecodable without what came before: wait for a keyframe. */
            if (marker) {
                self->dropped++;
                return keyframe_wanted(self);
            }
            return 0;
        }
        self->need_start = 0;
        self->first_sequence = sequence_number;
        self->sequence_offset = (uint16_t)(self->sequence_number - sequence_number);
        self->timestamp_in = timestamp;
        self->timestamp_out = continue_timeline(self);
        self->picture_id_offset = -1;
    } else if ((uint16_t)(sequence_number - self->first_sequence) >= 0x8000) {
        return 0; /* late, from before the point we started at */
    }
    uint16_t sequence = (uint16_t)(sequence_number + self->sequence_offset);
    int64_t out = rewrite_timestamp(self, timestamp);
    int32_t picture_id = self->vp8 ? renumber_picture(self, payload, size) : -1;
    int sent = lane_send(self, payload, size, marker, (uint32_t)out, sequence, picture_id);
    if (sent < 0) return -1;
    if (sent) {
        if (marker || !self->video) self->forwarded++;
    } else if (self->video) {
        /* The socket would not take it: the frame is broken, restart at a keyframe. */
        self->dropped++;
        self->need_start = 1;
        return keyframe_wanted(self);
    }
    return 0;
}

int rr_arg_u32(PyObject *o, uint32_t *out) {
    unsigned long value = PyLong_AsUnsignedLongMask(o);
    if (value == (unsigned long)-1 && PyErr_Occurred()) return 0;
    *out = (uint32_t)value;
    return 1;
}

/* push(sequence_number, timestamp, marker, payload, keyframe): one packet of the source. */
static PyObject *Lane_push(LaneObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "push() takes 5 arguments");
        return NULL;
    }
    uint32_t sequence, timestamp;
    if (!rr_arg_u32(args[0], &sequence) || !rr_arg_u32(args[1], &timestamp)) return NULL;
    int marker = PyObject_IsTrue(args[2]), keyframe = PyObject_IsTrue(args[4]);
    if (marker < 0 || keyframe < 0) return NULL;
    Py_buffer payload;
    if (PyObject_GetBuffer(args[3], &payload, PyBUF_SIMPLE) < 0) return NULL;
    int result = lane_forward(self, (uint16_t)sequence, timestamp, marker, payload.buf,
                              (size_t)payload.len, keyframe);
    PyBuffer_Release(&payload);
    if (result < 0) return NULL;
    Py_RETURN_NONE;
}

/* send(payload, marker, timestamp, sequence_number=None, picture_id=-1) -> bool */
static PyObject *Lane_send(LaneObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"payload", "marker", "timestamp", "sequence_number", "picture_id",
                               NULL};
    Py_buffer payload;
    int marker;
    PyObject *timestamp_obj, *sequence_obj = Py_None;
    long picture_id = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*pO|Ol", keywords, &payload, &marker,
                                     &timestamp_obj, &sequence_obj, &picture_id))
        return NULL;
    uint32_t timestamp, sequence = 0;
    if (!rr_arg_u32(timestamp_obj, &timestamp) ||
        (sequence_obj != Py_None && !rr_arg_u32(sequence_obj, &sequence))) {
        PyBuffer_Release(&payload);
        return NULL;
    }
    if (picture_id < -1 || picture_id > 0x7FFF) picture_id = -1;
    int sent = lane_send(self, payload.buf, (size_t)payload.len, marker, timestamp,
                         sequence_obj == Py_None ? -1 : (int)(uint16_t)sequence,
                         (int32_t)picture_id);
    PyBuffer_Release(&payload);
    if (sent < 0) return NULL;
    return PyBool_FromLong(sent);
}

/* retransmit(sequence_number) -> bool: resend from the history (RTX when negotiated). */
static PyObject *Lane_retransmit(LaneObject *self, PyObject *arg) {
    uint32_t wanted;
    if (!rr_arg_u32(arg, &wanted)) return NULL;
    uint16_t sequence = (uint16_t)wanted;
    HistoryEntry *entry = &self->history[sequence % SEND_HISTORY];
    if (!entry->used || entry->sequence_number != sequence || self->srtp == NULL ||
        self->writer == NULL)
        Py_RETURN_FALSE;
    uint64_t ntp = ntp_now();
    uint8_t packet[RR_MAX_PACKET];
    Py_ssize_t sealed;
    if (self->rtx_payload_type >= 0 && self->rtx_writer != NULL) {
        /* RFC 4588: its own SSRC and numbering, the original number up front. */
        uint16_t rtx_sequence = self->rtx_sequence_number++;
        sealed = rr_writer_seal(self->rtx_writer, self->srtp, self->rtx_payload_type, rtx_sequence,
                                entry->timestamp, entry->marker, ntp, entry->data, entry->size,
                                entry->picture_id, sequence, packet, sizeof packet);
    } else {
        sealed = rr_writer_seal(self->writer, self->srtp, self->payload_type, sequence,
                                entry->timestamp, entry->marker, ntp, entry->data, entry->size,
                                entry->picture_id, -1, packet, sizeof packet);
    }
    int sent = lane_transmit(self, packet, sealed);
    if (sent < 0) return NULL;
    if (sent) self->retransmitted++;
    return PyBool_FromLong(sent);
}

/* configure(writer, rtx_writer, srtp, payload_type, rtx_payload_type, transmit) */
static PyObject *Lane_configure(LaneObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"writer",           "rtx_writer", "srtp", "payload_type",
                               "rtx_payload_type", "transmit",   NULL};
    PyObject *writer, *rtx_writer, *srtp, *rtx_pt, *transmit;
    int payload_type;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOiOO", keywords, &writer, &rtx_writer,
                                     &srtp, &payload_type, &rtx_pt, &transmit))
        return NULL;
    if (!rr_is_header_writer(writer) || (rtx_writer != Py_None && !rr_is_header_writer(rtx_writer))) {
        PyErr_SetString(PyExc_TypeError, "configure() needs HeaderWriters");
        return NULL;
    }
    if (!rr_is_srtp_context(srtp)) {
        PyErr_SetString(PyExc_TypeError, "configure() needs an SrtpContext");
        return NULL;
    }
    long rtx_payload_type = rtx_pt == Py_None ? -1 : PyLong_AsLong(rtx_pt);
    if (rtx_payload_type == -1 && PyErr_Occurred()) return NULL;
    if (payload_type < 0 || payload_type > 127 || rtx_payload_type < -1 || rtx_payload_type > 127) {
        PyErr_SetString(PyExc_ValueError, "payload types are 0 to 127");
        return NULL;
    }
    if (transmit != Py_None && !PyCallable_Check(transmit)) {
        PyErr_SetString(PyExc_TypeError, "transmit must be callable or None");
        return NULL;
    }
    Py_INCREF(writer);
    Py_XSETREF(self->writer, writer);
    Py_INCREF(srtp);
    Py_XSETREF(self->srtp, srtp);
    if (rtx_writer == Py_None) {
        Py_CLEAR(self->rtx_writer);
    } else {
        Py_INCREF(rtx_writer);
        Py_XSETREF(self->rtx_writer, rtx_writer);
    }
    Py_INCREF(transmit);
    Py_XSETREF(self->transmit, transmit);
    self->payload_type = payload_type;
    self->rtx_payload_type = (int)rtx_payload_type;
    Py_RETURN_NONE;
}

static PyObject *Lane_restart(LaneObject *self, PyObject *unused) {
    (void)unused;
    self->need_start = 1;
    Py_RETURN_NONE;
}

static PyObject *Lane_get_destination(LaneObject *self, void *closure) {
    (void)closure;
    PyObject *d = self->destination ? self->destination : Py_None;
    Py_INCREF(d);
    return d;
}

static int Lane_set_destination(LaneObject *self, PyObject *value, void *closure) {
    (void)closure;
    if (value == NULL || value == Py_None) {
        Py_CLEAR(self->destination);
        return 0;
    }
    if (!rr_is_destination(value)) {
        PyErr_SetString(PyExc_TypeError, "destination must be a Destination or None");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->destination, value);
    return 0;
}

static PyObject *Lane_get_callback(LaneObject *self, void *closure) {
    (void)closure;
    PyObject *f = self->on_keyframe_wanted ? self->on_keyframe_wanted : Py_None;
    Py_INCREF(f);
    return f;
}

static int Lane_set_callback(LaneObject *self, PyObject *value, void *closure) {
    (void)closure;
    if (value != NULL && value != Py_None && !PyCallable_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "on_keyframe_wanted must be callable or None");
        return -1;
    }
    if (value == Py_None) value = NULL;
    Py_XINCREF(value);
    Py_XSETREF(self->on_keyframe_wanted, value);
    return 0;
}

static PyObject *Lane_get_last_out(LaneObject *self, void *closure) {
    (void)closure;
    if (!self->has_last_out) Py_RETURN_NONE;
    return PyLong_FromLongLong(self->last_out);
}

static int Lane_set_last_out(LaneObject *self, PyObject *value, void *closure) {
    (void)closure;
    if (value == NULL || value == Py_None) {
        self->has_last_out = 0;
        return 0;
    }
    long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred()) return -1;
    self->last_out = v;
    self->has_last_out = 1;
    return 0;
}

static PyObject *Lane_get_clock(LaneObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->clock);
}

static int Lane_set_clock(LaneObject *self, PyObject *value, void *closure) {
    (void)closure;
    long v = value ? PyLong_AsLong(value) : -1;
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v <= 0 || v > 10000000) {
        PyErr_SetString(PyExc_ValueError, "clock rate out of range");
        return -1;
    }
    self->clock = (int)v;
    return 0;
}

static PyGetSetDef Lane_getset[] = {
    {"destination", (getter)Lane_get_destination, (setter)Lane_set_destination,
     "Destination for our own sendto(2), or None: sealed bytes go to `transmit`.", NULL},
    {"on_keyframe_wanted", (getter)Lane_get_callback, (setter)Lane_set_callback,
     "Called when a keyframe is wanted (waiting for one, or a send failed).", NULL},
    {"last_out", (getter)Lane_get_last_out, (setter)Lane_set_last_out,
     "The output timeline's last timestamp, unwrapped, or None.", NULL},
    {"clock", (getter)Lane_get_clock, (setter)Lane_set_clock, "The output's clock rate.", NULL},
    {NULL}};

#define LANE_MEMBER(name, type, flags, doc) \
    {#name, type, offsetof(LaneObject, name), flags, doc}

static PyMemberDef Lane_members[] = {
    LANE_MEMBER(active, T_BOOL, 0, "Python checked this lane may forward the source's packets."),
    LANE_MEMBER(ready, T_BOOL, 0, "The sender is running (PacketSender.ready)."),
    LANE_MEMBER(video, T_BOOL, 0, "A video stream: keyframe gating, frames counted at markers."),
    LANE_MEMBER(vp8, T_BOOL, 0, "The forwarded codec is VP8: picture ids are renumbered."),
    LANE_MEMBER(need_start, T_BOOL, 0, "Waiting for a point to start (a keyframe for video)."),
    LANE_MEMBER(last_out_at, T_DOUBLE, 0, "When the output timeline last moved (loop.time())."),
    LANE_MEMBER(sequence_number, T_USHORT, 0, "The sender's next sequence number."),
    LANE_MEMBER(rtx_sequence_number, T_USHORT, 0, "The retransmission stream's next one."),
    LANE_MEMBER(payload_type, T_INT, READONLY, "The payload type sent."),
    LANE_MEMBER(forwarded, T_ULONGLONG, READONLY, "Frames (audio: packets) forwarded."),
    LANE_MEMBER(dropped, T_ULONGLONG, READONLY, "Frames dropped by the subscriber."),
    LANE_MEMBER(packets, T_ULONGLONG, READONLY, "Packets sent."),
    LANE_MEMBER(octets, T_ULONGLONG, READONLY, "Payload bytes sent."),
    LANE_MEMBER(ntp, T_ULONGLONG, READONLY, "NTP time of the last packet sent."),
    LANE_MEMBER(rtp_timestamp, T_UINT, READONLY, "RTP timestamp of the last packet sent."),
    LANE_MEMBER(send_dropped, T_ULONGLONG, READONLY, "Packets the sender could not send."),
    LANE_MEMBER(send_errors, T_ULONGLONG, READONLY, "Failed sendto(2) calls."),
    LANE_MEMBER(retransmitted, T_ULONGLONG, READONLY, "Packets resent for NACKs."),
    {NULL}};

static PyMethodDef Lane_methods[] = {
    {"push", (PyCFunction)(void (*)(void))Lane_push, METH_FASTCALL,
     "push(sequence_number, timestamp, marker, payload, keyframe): one packet of the source "
     "(Subscriber.push_packet)."},
    {"send", (PyCFunction)(void (*)(void))Lane_send, METH_VARARGS | METH_KEYWORDS,
     "send(payload, marker, timestamp, sequence_number=None, picture_id=-1) -> bool "
     "(PacketSender.send)."},
    {"retransmit", (PyCFunction)Lane_retransmit, METH_O,
     "retransmit(sequence_number) -> bool: resend a packet from the NACK history."},
    {"configure", (PyCFunction)(void (*)(void))Lane_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(writer, rtx_writer, srtp, payload_type, rtx_payload_type, transmit)."},
    {"restart", (PyCFunction)Lane_restart, METH_NOARGS,
     "Start again at the source's next keyframe."},
    {NULL}};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.Lane",
    .tp_basicsize = sizeof(LaneObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One Subscriber with its PacketSender: rewrite, seal and send, in C.",
    .tp_new = Lane_new,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
    .tp_methods = Lane_methods,
    .tp_members = Lane_members,
    .tp_getset = Lane_getset,
};

/* -- Fanout ------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *lanes; /* tuple of Lane */
    int payload_type; /* -1: no codec yet */
    int codec;
    char video, python_sinks, frames_wanted;
    rr_frames *frames;    /* NULL: Python assembles this codec */
    PyObject *on_frames;  /* called with a list of (data, timestamp, keyframe) */
    PyObject *batch;      /* list, or NULL */
    double batch_started;
    unsigned long long frame_count, bytes;
    double last_packet_at; /* NaN before the first packet */
} FanoutObject;

static PyTypeObject FanoutType;

static int Fanout_traverse(FanoutObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->lanes);
    Py_VISIT(self->on_frames);
    Py_VISIT(self->batch);
    return 0;
}

static int Fanout_clear(FanoutObject *self) {
    Py_CLEAR(self->lanes);
    Py_CLEAR(self->on_frames);
    Py_CLEAR(self->batch);
    return 0;
}

static void Fanout_dealloc(FanoutObject *self) {
    PyObject_GC_UnTrack(self);
    Fanout_clear(self);
    if (self->frames != NULL) rr_frames_free(self->frames);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Fanout_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    (void)args, (void)kwargs;
    FanoutObject *self = (FanoutObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->payload_type = -1;
    self->last_packet_at = NAN;
    self->lanes = PyTuple_New(0);
    if (self->lanes == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

int rr_is_fanout(PyObject *o) { return PyObject_TypeCheck(o, &FanoutType); }

/* Hands the frames built so far to Python. 0, or -1 with a Python exception. */
static int flush_frames(FanoutObject *self) {
    if (self->batch == NULL || PyList_GET_SIZE(self->batch) == 0) return 0;
    PyObject *batch = self->batch;
    self->batch = NULL;
    if (self->on_frames == NULL || self->on_frames == Py_None) {
        Py_DECREF(batch);
        return 0;
    }
    PyObject *result = PyObject_CallOneArg(self->on_frames, batch);
    Py_DECREF(batch);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

static int assemble(FanoutObject *self, const rr_packet *packet, double now) {
    const uint8_t *data;
    size_t size;
    uint32_t timestamp;
    int keyframe;
    if (!rr_frames_add(self->frames, packet, &data, &size, &timestamp, &keyframe)) return 0;
    if (self->batch == NULL) {
        self->batch = PyList_New(0);
        if (self->batch == NULL) return -1;
        self->batch_started = now;
    }
    PyObject *item = Py_BuildValue("(y#kO)", (const char *)data, (Py_ssize_t)size,
                                   (unsigned long)timestamp, keyframe ? Py_True : Py_False);
    if (item == NULL) return -1;
    int failed = PyList_Append(self->batch, item);
    Py_DECREF(item);
    if (failed) return -1;
    /* Video: one call per frame; audio in batches, never a call per packet. */
    if (self->video || PyList_GET_SIZE(self->batch) >= FRAME_BATCH ||
        now - self->batch_started >= FRAME_BATCH_SECONDS)
        return flush_frames(self);
    return 0;
}

int rr_fanout_accepts(PyObject *fanout, int payload_type) {
    int expected = ((FanoutObject *)fanout)->payload_type;
    return expected >= 0 && payload_type == expected;
}

int rr_fanout_push(PyObject *fanout, const rr_packet *packet) {
    FanoutObject *self = (FanoutObject *)fanout;
    /* A codec Python has not set up yet (or a changed one): Python sees it first. */
    if (self->payload_type < 0 || packet->payload_type != self->payload_type) return 1;
    double now = monotonic_now();
    self->last_packet_at = now;
    self->bytes += packet->payload_size;
    int video = self->video;
    int keyframe = video && starts_keyframe(self->codec, packet->payload, packet->payload_size);
    if (packet->marker || !video) self->frame_count++;
    int python = self->python_sinks;
    /* The tuple is Python's; hold it in case a callback below replaces it. */
    PyObject *lanes = self->lanes;
    Py_INCREF(lanes);
    Py_ssize_t count = PyTuple_GET_SIZE(lanes);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *member = PyTuple_GET_ITEM(lanes, i);
        if (rr_is_pipe_out(member)) {
            /* A stream to another node (rtc/native/pipe_out.c). */
            if (!rr_pipe_out_active(member)) {
                python = 1;
            } else if (rr_pipe_out_forward(member, packet, keyframe) < 0) {
                Py_DECREF(lanes);
                return -1;
            }
            continue;
        }
        LaneObject *lane = (LaneObject *)member;
        if (!lane->active) {
            python = 1;
            continue;
        }
        if (lane_forward(lane, packet->sequence_number, packet->timestamp, packet->marker,
                         packet->payload, packet->payload_size, keyframe) < 0) {
            Py_DECREF(lanes);
            return -1;
        }
    }
    Py_DECREF(lanes);
    if (self->frames_wanted) {
        if (self->frames == NULL) return 1;
        if (assemble(self, packet, now) < 0) return -1;
    }
    return python;
}

/* push(sequence_number, timestamp, marker, payload) -> bool: whether Python must see it too. */
static PyObject *Fanout_push(FanoutObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "push() takes 4 arguments");
        return NULL;
    }
    uint32_t sequence, timestamp;
    if (!rr_arg_u32(args[0], &sequence) || !rr_arg_u32(args[1], &timestamp)) return NULL;
    int marker = PyObject_IsTrue(args[2]);
    if (marker < 0) return NULL;
    Py_buffer payload;
    if (PyObject_GetBuffer(args[3], &payload, PyBUF_SIMPLE) < 0) return NULL;
    rr_packet packet = {payload.buf, (size_t)payload.len, 0, timestamp, (uint16_t)sequence,
                        (uint8_t)(self->payload_type < 0 ? 0 : self->payload_type),
                        (uint8_t)marker};
    int result = self->payload_type < 0 ? 1 : rr_fanout_push((PyObject *)self, &packet);
    PyBuffer_Release(&payload);
    if (result < 0) return NULL;
    return PyBool_FromLong(result);
}

/* set_codec(payload_type, name, video): the source's codec (PacketSource._set_codec). */
static PyObject *Fanout_set_codec(FanoutObject *self, PyObject *args) {
    int payload_type, video;
    const char *name;
    if (!PyArg_ParseTuple(args, "isp", &payload_type, &name, &video)) return NULL;
    if (payload_type < 0 || payload_type > 127) {
        PyErr_SetString(PyExc_ValueError, "payload types are 0 to 127");
        return NULL;
    }
    int codec = strcmp(name, "VP8") == 0 ? CODEC_VP8 : strcmp(name, "H264") == 0 ? CODEC_H264
                                                                                  : CODEC_OTHER;
    if (payload_type != self->payload_type || video != self->video || codec != self->codec) {
        /* A new assembler, as PacketSource makes a new FrameAssembler; frames of the old
         * codec go first. */
        if (flush_frames(self) < 0) return NULL;
        if (self->frames != NULL) rr_frames_free(self->frames);
        self->frames = rr_frames_new(video, codec == CODEC_VP8);
    }
    self->payload_type = payload_type;
    self->video = (char)video;
    self->codec = codec;
    /* A new codec object: each subscriber checks again that it can take it as it is. */
    Py_ssize_t count = PyTuple_GET_SIZE(self->lanes);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *member = PyTuple_GET_ITEM(self->lanes, i);
        if (rr_is_pipe_out(member))
            rr_pipe_out_deactivate(member);
        else
            ((LaneObject *)member)->active = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *Fanout_set_lanes(FanoutObject *self, PyObject *lanes) {
    if (!PyTuple_Check(lanes)) {
        PyErr_SetString(PyExc_TypeError, "set_lanes() takes a tuple of Lanes and PipeOuts");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(lanes); i++) {
        PyObject *member = PyTuple_GET_ITEM(lanes, i);
        if (!PyObject_TypeCheck(member, &LaneType) && !rr_is_pipe_out(member)) {
            PyErr_SetString(PyExc_TypeError, "set_lanes() takes a tuple of Lanes and PipeOuts");
            return NULL;
        }
    }
    Py_INCREF(lanes);
    Py_SETREF(self->lanes, lanes);
    Py_RETURN_NONE;
}

static PyObject *Fanout_flush(FanoutObject *self, PyObject *unused) {
    (void)unused;
    if (flush_frames(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Fanout_get_lanes(FanoutObject *self, void *closure) {
    (void)closure;
    Py_INCREF(self->lanes);
    return self->lanes;
}

static PyObject *Fanout_get_last(FanoutObject *self, void *closure) {
    (void)closure;
    if (isnan(self->last_packet_at)) Py_RETURN_NONE;
    return PyFloat_FromDouble(self->last_packet_at);
}

static PyObject *Fanout_get_assembles(FanoutObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->frames != NULL);
}

static PyObject *Fanout_get_incomplete(FanoutObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->frames ? rr_frames_incomplete(self->frames) : 0);
}

static PyObject *Fanout_get_on_frames(FanoutObject *self, void *closure) {
    (void)closure;
    PyObject *f = self->on_frames ? self->on_frames : Py_None;
    Py_INCREF(f);
    return f;
}

static int Fanout_set_on_frames(FanoutObject *self, PyObject *value, void *closure) {
    (void)closure;
    if (value != NULL && value != Py_None && !PyCallable_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "on_frames must be callable or None");
        return -1;
    }
    if (value == Py_None) value = NULL;
    Py_XINCREF(value);
    Py_XSETREF(self->on_frames, value);
    return 0;
}

static PyGetSetDef Fanout_getset[] = {
    {"lanes", (getter)Fanout_get_lanes, NULL, "The lanes packets go to.", NULL},
    {"last_packet_at", (getter)Fanout_get_last, NULL,
     "loop.time() of the last packet counted, or None.", NULL},
    {"assembles", (getter)Fanout_get_assembles, NULL,
     "Whether C builds this codec's frames (rtc/native/frames.c).", NULL},
    {"incomplete", (getter)Fanout_get_incomplete, NULL, "Frames C gave up as incomplete.",
     NULL},
    {"on_frames", (getter)Fanout_get_on_frames, (setter)Fanout_set_on_frames,
     "Called with a list of (data, timestamp, keyframe) frames C built.", NULL},
    {NULL}};

static PyMemberDef Fanout_members[] = {
    {"python_sinks", T_BOOL, offsetof(FanoutObject, python_sinks), 0,
     "Python sinks are attached: Python sees every packet."},
    {"frames_wanted", T_BOOL, offsetof(FanoutObject, frames_wanted), 0,
     "Frames are wanted (moderation's listeners, decoding)."},
    {"frames", T_ULONGLONG, offsetof(FanoutObject, frame_count), READONLY,
     "Frames counted (audio: packets)."},
    {"bytes", T_ULONGLONG, offsetof(FanoutObject, bytes), READONLY, "Payload bytes counted."},
    {NULL}};

static PyMethodDef Fanout_methods[] = {
    {"push", (PyCFunction)(void (*)(void))Fanout_push, METH_FASTCALL,
     "push(sequence_number, timestamp, marker, payload) -> bool: fan one packet out; "
     "True when Python must see it too."},
    {"set_codec", (PyCFunction)Fanout_set_codec, METH_VARARGS,
     "set_codec(payload_type, name, video): the source's codec; lanes check it again."},
    {"set_lanes", (PyCFunction)Fanout_set_lanes, METH_O, "set_lanes(lanes): where packets go."},
    {"flush", (PyCFunction)Fanout_flush, METH_NOARGS, "Hand the frames built so far to Python."},
    {NULL}};

static PyTypeObject FanoutType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.Fanout",
    .tp_basicsize = sizeof(FanoutObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One source's fan-out to its lanes, with its counters and frames.",
    .tp_new = Fanout_new,
    .tp_dealloc = (destructor)Fanout_dealloc,
    .tp_traverse = (traverseproc)Fanout_traverse,
    .tp_clear = (inquiry)Fanout_clear,
    .tp_methods = Fanout_methods,
    .tp_members = Fanout_members,
    .tp_getset = Fanout_getset,
};

/* freeze_clock(monotonic, wall): tests fix loop.time() and time.time() (None: the real ones). */
static PyObject *freeze_clock(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *monotonic, *wall;
    if (!PyArg_ParseTuple(args, "OO", &monotonic, &wall)) return NULL;
    double m = monotonic == Py_None ? NAN : PyFloat_AsDouble(monotonic);
    if (m == -1.0 && PyErr_Occurred()) return NULL;
    double w = wall == Py_None ? NAN : PyFloat_AsDouble(wall);
    if (w == -1.0 && PyErr_Occurred()) return NULL;
    frozen_monotonic = m;
    frozen_wall = w;
    Py_RETURN_NONE;
}

static PyMethodDef functions[] = {
    {"freeze_clock", freeze_clock, METH_VARARGS,
     "freeze_clock(monotonic, wall): for tests, fix the lanes' clocks (None: real time)."},
    {NULL}};

int rr_register_fanout(PyObject *module) {
    if (PyType_Ready(&LaneType) < 0 || PyType_Ready(&FanoutType) < 0) return -1;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(module, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        return -1;
    }
    Py_INCREF(&FanoutType);
    if (PyModule_AddObject(module, "Fanout", (PyObject *)&FanoutType) < 0) {
        Py_DECREF(&FanoutType);
        return -1;
    }
    return PyModule_AddFunctions(module, functions);
}
