/* A connection's inbound RTP, from the datagram to its source's fan-out, in C.
 *
 * The Python path (rtc/aiortc_seam.py's _Inbound and _InboundStream) decrypts,
 * parses (rtc.rtp.parse), keeps aiortc's receive statistics, REMB and NACK state
 * and calls its handler with an RtpView, all in Python per packet. This file does
 * the same without a Python object per packet:
 *   Inbound       - one per DTLS transport: SRTP, parse, the SSRC table;
 *   Receiver      - one per aiortc receiver: its NACK state, REMB estimator and
 *                   where its packets go (a native fan-out and/or a Python handler);
 *   Stream        - one per inbound SSRC: aiortc's StreamStatistics, in C and a
 *                   drop-in for it (aiortc's receiver reports and getStats read it);
 *   NackGenerator - aiortc's NackGenerator, in C.
 * Python is called only when it has something to do: a new SSRC to route, a NACK
 * or REMB to send, a packet a Python sink must see.
 */
#include "rr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "structmember.h"

/* aiortc.rtp.RTP_HISTORY_SIZE: missing packets further back than this are not NACKed. */
#define NACK_HISTORY 128
/* What NackGenerator can hold after its truncation (at most NACK_HISTORY), with room. */
#define NACK_CAPACITY 256
/* aiortc.rtp.PACKETS_LOST_MIN / MAX: the 24-bit signed field of a report block. */
#define PACKETS_LOST_MIN (-(1LL << 23))
#define PACKETS_LOST_MAX ((1LL << 23) - 1)
/* SSRCs in one REMB (a connection has at most a few). */
#define REMB_SSRCS 16
/* Packets up to this size are decrypted on the stack. */
#define STACK_PACKET 2048
#define ONE_BYTE_PROFILE 0xBEDE
/* Reading a socket: datagrams per recvmmsg(2), and calls per wake-up (so one busy
 * socket leaves the event loop its turn, as asyncio's one datagram per turn does). */
#define DRAIN_BATCH 32
#define DRAIN_ROUNDS 4
/* Bytes per datagram read: a browser's packets fit its MTU; DTLS and STUN are smaller.
 * A longer datagram is counted (truncated) and dropped. */
#define DRAIN_SLOT 4096

enum { INBOUND_HANDLED = 0, INBOUND_PASS = 1, INBOUND_UNREADABLE = 2, INBOUND_IGNORED = 3 };

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* aiortc.utils.uint16_gt, on Python's unbounded ints (arguments may be any value a
 * Python caller set). */
static int uint16_gt(long long a, long long b) {
    return (a < b && b - a > 0x8000) || (a > b && a - b < 0x8000);
}

static double now_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* -- parsing (rtc.rtp.parse) -------------------------------------------------- */

typedef struct {
    rr_packet packet;
    size_t padding;
    int has_abs_send_time;
    uint32_t abs_send_time;
} parsed;

/* rtc.rtp._find_abs_send_time. */
static int find_abs_send_time(const uint8_t *data, size_t start, size_t end, long long wanted,
                              uint32_t *value) {
    size_t position = start;
    while (position < end) {
        uint8_t byte = data[position];
        if (byte == 0) {
            position += 1;
            continue;
        }
        int ident = byte >> 4;
        size_t length = (size_t)(byte & 0x0F) + 1;
        if (ident == 15) return 0;
        if (ident == wanted && length == 3 && position + 4 <= end) {
            *value = (uint32_t)data[position + 1] << 16 | (uint32_t)data[position + 2] << 8 |
                     data[position + 3];
            return 1;
        }
        position += 1 + length;
    }
    return 0;
}

/* rtc.rtp.parse: 0 and `out` filled, or -1 if malformed. `abs_id` < 0: not wanted. */
static int parse_rtp(const uint8_t *data, size_t size, long long abs_id, int has_abs_id,
                     parsed *out) {
    if (size < 12) return -1;
    uint8_t first = data[0];
    if (first >> 6 != 2) return -1;
    size_t offset = 12 + 4 * (size_t)(first & 0x0F);
    if (offset > size) return -1;
    out->has_abs_send_time = 0;
    out->abs_send_time = 0;
    if (first & 0x10) {
        if (offset + 4 > size) return -1;
        uint16_t profile = be16(data + offset);
        size_t words = be16(data + offset + 2);
        size_t start = offset + 4;
        offset = start + 4 * words;
        if (offset > size) return -1;
        if (has_abs_id && profile == ONE_BYTE_PROFILE)
            out->has_abs_send_time =
                find_abs_send_time(data, start, offset, abs_id, &out->abs_send_time);
    }
    size_t end = size;
    size_t padding = 0;
    if (first & 0x20) {
        padding = data[size - 1];
        if (padding > end - offset) return -1;
        end -= padding;
    }
    out->packet.payload = data + offset;
    out->packet.payload_size = end - offset;
    out->packet.ssrc = be32(data + 8);
    out->packet.timestamp = be32(data + 4);
    out->packet.sequence_number = be16(data + 2);
    out->packet.payload_type = data[1] & 0x7F;
    out->packet.marker = (data[1] & 0x80) != 0;
    out->padding = padding;
    return 0;
}

/* RTP rather than RTCP, DTLS or STUN (rtc.aiortc_seam._is_rtp, RFC 7983). */
static int is_rtp(const uint8_t *data, size_t size) {
    return size >= 12 && data[0] > 127 && data[0] < 192 && !(data[1] >= 192 && data[1] <= 208);
}

/* rtc.rtp.RtpView, imported when first needed (rtc.rtp does not import this module). */
static PyObject *view_type = NULL;

static PyObject *make_view(const parsed *p) {
    if (view_type == NULL) {
        PyObject *module = PyImport_ImportModule("rtc.rtp");
        if (module == NULL) return NULL;
        view_type = PyObject_GetAttrString(module, "RtpView");
        Py_DECREF(module);
        if (view_type == NULL) return NULL;
    }
    PyObject *abs_send_time = p->has_abs_send_time ? PyLong_FromUnsignedLong(p->abs_send_time)
                                                   : Py_NewRef(Py_None);
    if (abs_send_time == NULL) return NULL;
    return PyObject_CallFunction(view_type, "kiIkOy#nN", (unsigned long)p->packet.ssrc,
                                 (int)p->packet.payload_type, (unsigned)p->packet.sequence_number,
                                 (unsigned long)p->packet.timestamp,
                                 p->packet.marker ? Py_True : Py_False,
                                 (const char *)p->packet.payload,
                                 (Py_ssize_t)p->packet.payload_size, (Py_ssize_t)p->padding,
                                 abs_send_time);
}

/* -- NackGenerator (aiortc.rtcrtpreceiver.NackGenerator) ----------------------- */

typedef struct {
    int has_max;
    long long max_seq;
    int count;
    long long missing[NACK_CAPACITY];
} nack_state;

static int nack_has(const nack_state *n, long long seq) {
    for (int i = 0; i < n->count; i++)
        if (n->missing[i] == seq) return 1;
    return 0;
}

static void nack_discard(nack_state *n, long long seq) {
    for (int i = 0; i < n->count; i++)
        if (n->missing[i] == seq) {
            n->missing[i] = n->missing[--n->count];
            return;
        }
}

/* NackGenerator.truncate: forget what is further back than NACK_HISTORY. */
static int nack_stale(const nack_state *n, long long seq) {
    return uint16_gt((n->max_seq - NACK_HISTORY) & 0xFFFF, seq);
}

static void nack_truncate(nack_state *n) {
    if (!n->has_max) return;
    for (int i = 0; i < n->count;)
        if (nack_stale(n, n->missing[i]))
            n->missing[i] = n->missing[--n->count];
        else
            i++;
}

/* NackGenerator.add: 1 when packets went missing (then a NACK is due). */
static int nack_add(nack_state *n, long long seq) {
    int missed = 0;
    if (!n->has_max) {
        n->has_max = 1;
        n->max_seq = seq;
        return 0;
    }
    if (uint16_gt(seq, n->max_seq)) {
        long long old = n->max_seq;
        /* aiortc adds every sequence number in the gap and then truncates; adding
         * only the ones truncation keeps leaves the same set. */
        n->max_seq = seq;
        long long next = (old + 1) & 0xFFFF;
        while (uint16_gt(seq, next)) {
            missed = 1;
            if (!nack_stale(n, next) && !nack_has(n, next) && n->count < NACK_CAPACITY)
                n->missing[n->count++] = next;
            next = (next + 1) & 0xFFFF;
        }
    } else {
        nack_discard(n, seq);
    }
    nack_truncate(n);
    return missed;
}

static int compare_seq(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* sorted(missing), as aiortc passes it to its NACK. */
static PyObject *nack_sorted(const nack_state *n) {
    long long sorted[NACK_CAPACITY];
    memcpy(sorted, n->missing, sizeof(long long) * (size_t)n->count);
    qsort(sorted, (size_t)n->count, sizeof(long long), compare_seq);
    PyObject *list = PyList_New(n->count);
    if (list == NULL) return NULL;
    for (int i = 0; i < n->count; i++) {
        PyObject *item = PyLong_FromLongLong(sorted[i]);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

typedef struct {
    PyObject_HEAD
    nack_state state;
} NackObject;

static PyObject *Nack_add(NackObject *self, PyObject *arg) {
    long long seq = PyLong_AsLongLong(arg);
    if (seq == -1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(nack_add(&self->state, seq));
}

static PyObject *Nack_get_max_seq(NackObject *self, void *closure) {
    (void)closure;
    if (!self->state.has_max) Py_RETURN_NONE;
    return PyLong_FromLongLong(self->state.max_seq);
}

static PyObject *Nack_get_missing(NackObject *self, void *closure) {
    (void)closure;
    PyObject *list = nack_sorted(&self->state);
    if (list == NULL) return NULL;
    PyObject *set = PySet_New(list);
    Py_DECREF(list);
    return set;
}

static PyMethodDef Nack_methods[] = {
    {"add", (PyCFunction)Nack_add, METH_O,
     "add(sequence_number) -> bool: mark a packet received; True when a NACK is due."},
    {NULL}};

static PyGetSetDef Nack_getset[] = {
    {"max_seq", (getter)Nack_get_max_seq, NULL, "The newest sequence number seen.", NULL},
    {"missing", (getter)Nack_get_missing, NULL, "Sequence numbers to NACK (a copy).", NULL},
    {NULL}};

static PyTypeObject NackType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.NackGenerator",
    .tp_basicsize = sizeof(NackObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "aiortc's NackGenerator in C: which packets of a receiver are missing.",
    .tp_new = PyType_GenericNew,
    .tp_methods = Nack_methods,
    .tp_getset = Nack_getset,
};

/* -- Receiver ----------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *handler; /* handler(codec, view): a Python sink's packets */
    PyObject *fanout;  /* a rtc._fastpath.Fanout, or NULL */
    PyObject *on_nack; /* on_nack(media_ssrc, lost), or NULL: no NACKs */
    PyObject *on_remb; /* on_remb(bitrate, ssrcs), or NULL: no REMB */
    int nack_enabled;
    nack_state nack;
    rr_remb *remb;
} ReceiverObject;

static int Receiver_init(ReceiverObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"handler", "fanout", "on_nack", "on_remb", NULL};
    PyObject *handler, *fanout = Py_None, *on_nack = Py_None, *on_remb = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OOO", keywords, &handler, &fanout, &on_nack,
                                     &on_remb))
        return -1;
    if (!PyCallable_Check(handler) || (on_nack != Py_None && !PyCallable_Check(on_nack)) ||
        (on_remb != Py_None && !PyCallable_Check(on_remb))) {
        PyErr_SetString(PyExc_TypeError, "handler, on_nack and on_remb must be callable");
        return -1;
    }
    if (fanout != Py_None && !rr_is_fanout(fanout)) {
        PyErr_SetString(PyExc_TypeError, "fanout must be a rtc._fastpath.Fanout or None");
        return -1;
    }
    if (self->handler != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Receiver is already initialised");
        return -1;
    }
    if (on_remb != Py_None) {
        self->remb = rr_remb_new();
        if (self->remb == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    self->handler = Py_NewRef(handler);
    self->fanout = fanout == Py_None ? NULL : Py_NewRef(fanout);
    self->on_nack = on_nack == Py_None ? NULL : Py_NewRef(on_nack);
    self->on_remb = on_remb == Py_None ? NULL : Py_NewRef(on_remb);
    self->nack_enabled = self->on_nack != NULL;
    return 0;
}

static int Receiver_traverse(ReceiverObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->handler);
    Py_VISIT(self->fanout);
    Py_VISIT(self->on_nack);
    Py_VISIT(self->on_remb);
    return 0;
}

static int Receiver_clear(ReceiverObject *self) {
    Py_CLEAR(self->handler);
    Py_CLEAR(self->fanout);
    Py_CLEAR(self->on_nack);
    Py_CLEAR(self->on_remb);
    return 0;
}

static void Receiver_dealloc(ReceiverObject *self) {
    PyObject_GC_UnTrack(self);
    Receiver_clear(self);
    if (self->remb != NULL) rr_remb_free(self->remb);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.Receiver",
    .tp_basicsize = sizeof(ReceiverObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Receiver(handler, fanout=None, on_nack=None, on_remb=None): where one aiortc "
              "receiver's packets go, and its NACK and REMB state (on_nack: NACKs are "
              "generated; on_remb: bandwidth is estimated).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Receiver_init,
    .tp_traverse = (traverseproc)Receiver_traverse,
    .tp_clear = (inquiry)Receiver_clear,
    .tp_dealloc = (destructor)Receiver_dealloc,
};

/* -- Stream (aiortc.rtcrtpreceiver.StreamStatistics) -------------------------- */

typedef struct {
    PyObject_HEAD
    ReceiverObject *receiver;
    PyObject *codec; /* what the handler is given with each packet (the original's, for RTX) */
    uint32_t ssrc;
    int is_rtx;
    uint8_t rtx_payload_type; /* the original stream's payload type and SSRC */
    uint32_t rtx_ssrc;
    /* StreamStatistics, field for field; has_* is "not None". */
    int has_base, has_max, has_last_arrival, has_last_timestamp;
    long long base_seq, max_seq, last_arrival, last_timestamp;
    long long cycles, packets_received, clockrate, jitter_q4, expected_prior, received_prior;
} StreamObject;

static int Stream_init(StreamObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"receiver", "ssrc", "clockrate", "codec", "rtx", NULL};
    PyObject *receiver, *codec, *rtx = Py_None;
    unsigned long ssrc;
    long long clockrate;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!kLO|O", keywords, &ReceiverType, &receiver,
                                     &ssrc, &clockrate, &codec, &rtx))
        return -1;
    if (ssrc > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "ssrc must fit in 32 bits");
        return -1;
    }
    if (self->receiver != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Stream is already initialised");
        return -1;
    }
    if (rtx != Py_None) {
        int payload_type;
        unsigned long original;
        if (!PyArg_ParseTuple(rtx, "ik", &payload_type, &original)) return -1;
        if (payload_type < 0 || payload_type > 127 || original > 0xFFFFFFFFUL) {
            PyErr_SetString(PyExc_ValueError, "rtx must be (payload type, ssrc)");
            return -1;
        }
        self->is_rtx = 1;
        self->rtx_payload_type = (uint8_t)payload_type;
        self->rtx_ssrc = (uint32_t)original;
    }
    self->receiver = (ReceiverObject *)Py_NewRef(receiver);
    self->codec = Py_NewRef(codec);
    self->ssrc = (uint32_t)ssrc;
    self->clockrate = clockrate;
    return 0;
}

/* StreamStatistics.add, with `arrival` = int(time.time() * clockrate). */
static void stats_add(StreamObject *s, long long seq, long long timestamp, long long arrival) {
    int in_order = !s->has_max || uint16_gt(seq, s->max_seq);
    s->packets_received += 1;
    if (!s->has_base) {
        s->has_base = 1;
        s->base_seq = seq;
    }
    if (in_order) {
        if (s->has_max && seq < s->max_seq) s->cycles += 1 << 16;
        s->has_max = 1;
        s->max_seq = seq;
        if ((!s->has_last_timestamp || timestamp != s->last_timestamp) &&
            s->packets_received > 1) {
            long long diff = (arrival - s->last_arrival) - (timestamp - s->last_timestamp);
            if (diff < 0) diff = -diff;
            s->jitter_q4 += diff - ((s->jitter_q4 + 8) >> 4);
        }
        s->has_last_arrival = s->has_last_timestamp = 1;
        s->last_arrival = arrival;
        s->last_timestamp = timestamp;
    }
}

static long long arrival_now(const StreamObject *s) {
    return (long long)(now_seconds() * (double)s->clockrate);
}

static PyObject *Stream_add(StreamObject *self, PyObject *packet) {
    PyObject *seq = PyObject_GetAttrString(packet, "sequence_number");
    if (seq == NULL) return NULL;
    long long sequence_number = PyLong_AsLongLong(seq);
    Py_DECREF(seq);
    if (sequence_number == -1 && PyErr_Occurred()) return NULL;
    PyObject *ts = PyObject_GetAttrString(packet, "timestamp");
    if (ts == NULL) return NULL;
    long long timestamp = PyLong_AsLongLong(ts);
    Py_DECREF(ts);
    if (timestamp == -1 && PyErr_Occurred()) return NULL;
    stats_add(self, sequence_number, timestamp, arrival_now(self));
    Py_RETURN_NONE;
}

static PyObject *Stream_add_at(StreamObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "add_at(sequence_number, timestamp, arrival)");
        return NULL;
    }
    long long values[3];
    for (int i = 0; i < 3; i++) {
        values[i] = PyLong_AsLongLong(args[i]);
        if (values[i] == -1 && PyErr_Occurred()) return NULL;
    }
    stats_add(self, values[0], values[1], values[2]);
    Py_RETURN_NONE;
}

/* Fields StreamStatistics leaves None: base_seq, max_seq, _last_arrival, _last_timestamp. */
typedef struct {
    size_t has;
    size_t value;
} optional_field;

static const optional_field optional_fields[] = {
    {offsetof(StreamObject, has_base), offsetof(StreamObject, base_seq)},
    {offsetof(StreamObject, has_max), offsetof(StreamObject, max_seq)},
    {offsetof(StreamObject, has_last_arrival), offsetof(StreamObject, last_arrival)},
    {offsetof(StreamObject, has_last_timestamp), offsetof(StreamObject, last_timestamp)},
};

static PyObject *Stream_get_optional(StreamObject *self, void *closure) {
    const optional_field *f = &optional_fields[(intptr_t)closure];
    if (!*(int *)((char *)self + f->has)) Py_RETURN_NONE;
    return PyLong_FromLongLong(*(long long *)((char *)self + f->value));
}

static int Stream_set_optional(StreamObject *self, PyObject *value, void *closure) {
    const optional_field *f = &optional_fields[(intptr_t)closure];
    if (value == NULL || value == Py_None) {
        *(int *)((char *)self + f->has) = 0;
        *(long long *)((char *)self + f->value) = 0;
        return 0;
    }
    long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred()) return -1;
    *(int *)((char *)self + f->has) = 1;
    *(long long *)((char *)self + f->value) = v;
    return 0;
}

static long long packets_expected(const StreamObject *s) {
    return s->cycles + s->max_seq - s->base_seq + 1;
}

static int require_packets(const StreamObject *s) {
    if (!s->has_max || !s->has_base) {
        /* What StreamStatistics does with max_seq None. */
        PyErr_SetString(PyExc_TypeError, "no packet received yet");
        return -1;
    }
    return 0;
}

static PyObject *Stream_get_packets_expected(StreamObject *self, void *closure) {
    (void)closure;
    if (require_packets(self) < 0) return NULL;
    return PyLong_FromLongLong(packets_expected(self));
}

static PyObject *Stream_get_packets_lost(StreamObject *self, void *closure) {
    (void)closure;
    if (require_packets(self) < 0) return NULL;
    long long lost = packets_expected(self) - self->packets_received;
    if (lost < PACKETS_LOST_MIN) lost = PACKETS_LOST_MIN;
    if (lost > PACKETS_LOST_MAX) lost = PACKETS_LOST_MAX;
    return PyLong_FromLongLong(lost);
}

/* A property with a side effect, as aiortc's: each read starts a new interval. */
static PyObject *Stream_get_fraction_lost(StreamObject *self, void *closure) {
    (void)closure;
    if (require_packets(self) < 0) return NULL;
    long long expected = packets_expected(self);
    long long expected_interval = expected - self->expected_prior;
    self->expected_prior = expected;
    long long received_interval = self->packets_received - self->received_prior;
    self->received_prior = self->packets_received;
    long long lost_interval = expected_interval - received_interval;
    if (expected_interval == 0 || lost_interval <= 0) return PyLong_FromLong(0);
    /* Python's // floors; both are positive here. */
    return PyLong_FromLongLong((lost_interval << 8) / expected_interval);
}

static PyObject *Stream_get_jitter(StreamObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(self->jitter_q4 >> 4);
}

static PyObject *Stream_get_ssrc(StreamObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLong(self->ssrc);
}

static PyMemberDef Stream_members[] = {
    {"cycles", T_LONGLONG, offsetof(StreamObject, cycles), 0, NULL},
    {"packets_received", T_LONGLONG, offsetof(StreamObject, packets_received), 0, NULL},
    {"_clockrate", T_LONGLONG, offsetof(StreamObject, clockrate), 0, NULL},
    {"_jitter_q4", T_LONGLONG, offsetof(StreamObject, jitter_q4), 0, NULL},
    {"_expected_prior", T_LONGLONG, offsetof(StreamObject, expected_prior), 0, NULL},
    {"_received_prior", T_LONGLONG, offsetof(StreamObject, received_prior), 0, NULL},
    {NULL}};

static PyGetSetDef Stream_getset[] = {
    {"base_seq", (getter)Stream_get_optional, (setter)Stream_set_optional, NULL, (void *)0},
    {"max_seq", (getter)Stream_get_optional, (setter)Stream_set_optional, NULL, (void *)1},
    {"_last_arrival", (getter)Stream_get_optional, (setter)Stream_set_optional, NULL, (void *)2},
    {"_last_timestamp", (getter)Stream_get_optional, (setter)Stream_set_optional, NULL,
     (void *)3},
    {"packets_expected", (getter)Stream_get_packets_expected, NULL, NULL, NULL},
    {"packets_lost", (getter)Stream_get_packets_lost, NULL, NULL, NULL},
    {"fraction_lost", (getter)Stream_get_fraction_lost, NULL, NULL, NULL},
    {"jitter", (getter)Stream_get_jitter, NULL, NULL, NULL},
    {"ssrc", (getter)Stream_get_ssrc, NULL, NULL, NULL},
    {NULL}};

static PyMethodDef Stream_methods[] = {
    {"add", (PyCFunction)Stream_add, METH_O,
     "add(packet): count a packet (anything with sequence_number and timestamp) as "
     "StreamStatistics.add does."},
    {"add_at", (PyCFunction)(void (*)(void))Stream_add_at, METH_FASTCALL,
     "add_at(sequence_number, timestamp, arrival): add, with the arrival time given in "
     "clock-rate units (for tests)."},
    {NULL}};

static int Stream_traverse(StreamObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->receiver);
    Py_VISIT(self->codec);
    return 0;
}

static int Stream_clear(StreamObject *self) {
    Py_CLEAR(self->receiver);
    Py_CLEAR(self->codec);
    return 0;
}

static void Stream_dealloc(StreamObject *self) {
    PyObject_GC_UnTrack(self);
    Stream_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject StreamType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.Stream",
    .tp_basicsize = sizeof(StreamObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Stream(receiver, ssrc, clockrate, codec, rtx=None): one inbound SSRC and its "
              "receive statistics, a drop-in for aiortc's StreamStatistics. rtx: (original "
              "payload type, original ssrc) for a retransmission stream.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Stream_init,
    .tp_traverse = (traverseproc)Stream_traverse,
    .tp_clear = (inquiry)Stream_clear,
    .tp_dealloc = (destructor)Stream_dealloc,
    .tp_methods = Stream_methods,
    .tp_members = Stream_members,
    .tp_getset = Stream_getset,
};

/* What _InboundStream.receive does with one parsed packet. 0, or -1 with an exception. */
static int stream_receive(StreamObject *s, parsed *p) {
    ReceiverObject *r = s->receiver;
    double now = now_seconds();
    stats_add(s, p->packet.sequence_number, p->packet.timestamp,
              (long long)(now * (double)s->clockrate));
    if (r->remb != NULL && p->has_abs_send_time) {
        uint64_t bitrate = 0;
        uint32_t ssrcs[REMB_SSRCS];
        int count = 0;
        if (rr_remb_add(r->remb, p->abs_send_time, (int64_t)(now * 1000.0),
                        (uint32_t)(p->packet.payload_size + p->padding), p->packet.ssrc,
                        &bitrate, ssrcs, &count, REMB_SSRCS)) {
            if (count < 0) count = 0;
            if (count > REMB_SSRCS) count = REMB_SSRCS;
            PyObject *list = PyList_New(count);
            if (list == NULL) return -1;
            for (int i = 0; i < count; i++) {
                PyObject *item = PyLong_FromUnsignedLong(ssrcs[i]);
                if (item == NULL) {
                    Py_DECREF(list);
                    return -1;
                }
                PyList_SET_ITEM(list, i, item);
            }
            PyObject *result =
                PyObject_CallFunction(r->on_remb, "KN", (unsigned long long)bitrate, list);
            if (result == NULL) return -1;
            Py_DECREF(result);
        }
    }
    if (s->is_rtx) {
        /* rtc.rtp.unwrap_rtx: padding only is a bandwidth probe, counted above, not forwarded. */
        if (p->packet.payload_size < 2) return 0;
        p->packet.sequence_number = be16(p->packet.payload);
        p->packet.payload += 2;
        p->packet.payload_size -= 2;
        p->packet.payload_type = s->rtx_payload_type;
        p->packet.ssrc = s->rtx_ssrc;
        p->padding = 0;
    }
    if (r->nack_enabled && nack_add(&r->nack, p->packet.sequence_number)) {
        PyObject *lost = nack_sorted(&r->nack);
        if (lost == NULL) return -1;
        PyObject *result =
            PyObject_CallFunction(r->on_nack, "kN", (unsigned long)p->packet.ssrc, lost);
        if (result == NULL) return -1;
        Py_DECREF(result);
    }
    if (p->packet.payload_size == 0) return 0;
    if (r->fanout != NULL) {
        int more = rr_fanout_push(r->fanout, &p->packet);
        if (more <= 0) return more;
    }
    PyObject *view = make_view(p);
    if (view == NULL) return -1;
    PyObject *result = PyObject_CallFunctionObjArgs(r->handler, s->codec, view, NULL);
    Py_DECREF(view);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* -- Inbound ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *srtp;  /* a SrtpContext (inbound), or NULL until the keys are known */
    PyObject *learn; /* learn(plaintext) -> Stream | None, for an SSRC not seen yet */
    PyObject *ready; /* ready() -> bool: make `srtp` now if the keys are there */
    int has_abs_id;
    long long abs_id;
    int max_streams;
    int count;
    StreamObject **streams;
    unsigned long long unreadable, ignored, truncated, drained;
} InboundObject;

static int Inbound_init(InboundObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"max_streams", "learn", "ready", NULL};
    int max_streams;
    PyObject *learn, *ready;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOO", keywords, &max_streams, &learn, &ready))
        return -1;
    if (max_streams < 1 || max_streams > 1024) {
        PyErr_SetString(PyExc_ValueError, "max_streams must be 1..1024");
        return -1;
    }
    if (!PyCallable_Check(learn) || !PyCallable_Check(ready)) {
        PyErr_SetString(PyExc_TypeError, "learn and ready must be callable");
        return -1;
    }
    if (self->streams != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Inbound is already initialised");
        return -1;
    }
    self->streams = PyMem_Calloc((size_t)max_streams, sizeof(StreamObject *));
    if (self->streams == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->max_streams = max_streams;
    self->learn = Py_NewRef(learn);
    self->ready = Py_NewRef(ready);
    return 0;
}

static int Inbound_traverse(InboundObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->srtp);
    Py_VISIT(self->learn);
    Py_VISIT(self->ready);
    for (int i = 0; i < self->count; i++) Py_VISIT(self->streams[i]);
    return 0;
}

static int Inbound_clear(InboundObject *self) {
    Py_CLEAR(self->srtp);
    Py_CLEAR(self->learn);
    Py_CLEAR(self->ready);
    int count = self->count;
    self->count = 0;
    for (int i = 0; i < count; i++) Py_CLEAR(self->streams[i]);
    return 0;
}

static void Inbound_dealloc(InboundObject *self) {
    PyObject_GC_UnTrack(self);
    Inbound_clear(self);
    PyMem_Free(self->streams);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static StreamObject *find_stream(const InboundObject *self, uint32_t ssrc) {
    for (int i = 0; i < self->count; i++)
        if (self->streams[i]->ssrc == ssrc) return self->streams[i];
    return NULL;
}

/* A decrypted packet. Returns an INBOUND_* code, or -1 with an exception. */
static int inbound_plain(InboundObject *self, const uint8_t *plain, size_t size) {
    parsed p;
    if (parse_rtp(plain, size, self->abs_id, self->has_abs_id, &p) < 0) {
        self->unreadable++;
        return INBOUND_UNREADABLE;
    }
    StreamObject *stream = find_stream(self, p.packet.ssrc);
    if (stream == NULL) {
        if (self->count >= self->max_streams) {
            self->ignored++;
            return INBOUND_IGNORED;
        }
        PyObject *learnt =
            PyObject_CallFunction(self->learn, "y#", (const char *)plain, (Py_ssize_t)size);
        if (learnt == NULL) return -1;
        if (learnt == Py_None) { /* learn counted why */
            Py_DECREF(learnt);
            return INBOUND_IGNORED;
        }
        if (!PyObject_TypeCheck(learnt, &StreamType) ||
            ((StreamObject *)learnt)->receiver == NULL ||
            ((StreamObject *)learnt)->ssrc != p.packet.ssrc) {
            Py_DECREF(learnt);
            PyErr_SetString(PyExc_TypeError, "learn must return a Stream for the packet's SSRC");
            return -1;
        }
        /* learn may have re-entered and filled the table. */
        if (find_stream(self, p.packet.ssrc) != NULL || self->count >= self->max_streams) {
            Py_DECREF(learnt);
            self->ignored++;
            return INBOUND_IGNORED;
        }
        self->streams[self->count++] = (StreamObject *)learnt; /* the table's reference */
        stream = (StreamObject *)learnt;
    }
    Py_INCREF(stream); /* callbacks may drop the table */
    int done = stream_receive(stream, &p);
    Py_DECREF(stream);
    return done < 0 ? -1 : INBOUND_HANDLED;
}

/* One datagram. Returns an INBOUND_* code, or -1 with an exception. */
static int inbound_datagram(InboundObject *self, const uint8_t *data, size_t size) {
    if (!is_rtp(data, size)) return INBOUND_PASS;
    if (self->srtp == NULL) {
        PyObject *ready = PyObject_CallNoArgs(self->ready);
        if (ready == NULL) return -1;
        int is_ready = PyObject_IsTrue(ready);
        Py_DECREF(ready);
        if (is_ready < 0) return -1;
        if (!is_ready || self->srtp == NULL) return INBOUND_PASS;
    }
    uint8_t stack[STACK_PACKET];
    uint8_t *plain = size <= sizeof stack ? stack : PyMem_Malloc(size);
    if (plain == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject *srtp = Py_NewRef(self->srtp);
    Py_ssize_t plain_size = rr_srtp_unprotect(srtp, data, size, plain);
    Py_DECREF(srtp);
    int code;
    if (plain_size < 0) {
        self->unreadable++;
        code = INBOUND_UNREADABLE;
    } else {
        code = inbound_plain(self, plain, (size_t)plain_size);
    }
    if (plain != stack) PyMem_Free(plain);
    return code;
}

static PyObject *Inbound_datagram(InboundObject *self, PyObject *arg) {
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    int code = inbound_datagram(self, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return code < 0 ? NULL : PyLong_FromLong(code);
}

/* A socket protocol's datagram_received, with the original bound first (functools.partial). */
static PyObject *Inbound_datagram_received(InboundObject *self, PyObject *const *args,
                                           Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "datagram_received(original, data, addr)");
        return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0) return NULL;
    int code = inbound_datagram(self, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    if (code < 0) return NULL;
    if (code == INBOUND_PASS) return PyObject_CallFunctionObjArgs(args[0], args[1], args[2], NULL);
    Py_RETURN_NONE;
}

int rr_format_host(const struct sockaddr_storage *address, char *host, int *port) {
    if (address->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)address;
        if (inet_ntop(AF_INET, &v4->sin_addr, host, RR_HOST_SIZE) == NULL) return -1;
        *port = ntohs(v4->sin_port);
        return 0;
    }
    if (address->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)address;
        if (inet_ntop(AF_INET6, &v6->sin6_addr, host, INET6_ADDRSTRLEN) == NULL) return -1;
        if (v6->sin6_scope_id != 0) {
            char name[IF_NAMESIZE];
            size_t used = strlen(host);
            if (if_indextoname(v6->sin6_scope_id, name) != NULL)
                snprintf(host + used, RR_HOST_SIZE - used, "%%%s", name);
            else
                snprintf(host + used, RR_HOST_SIZE - used, "%%%u", v6->sin6_scope_id);
        }
        *port = ntohs(v6->sin6_port);
        return 0;
    }
    return -1;
}

/* A datagram's source as socket.recvfrom gives it (CPython's makesockaddr). */
static PyObject *make_address(const struct sockaddr_storage *address) {
    char host[RR_HOST_SIZE];
    int port;
    if (rr_format_host(address, host, &port) < 0) Py_RETURN_NONE;
    if (address->ss_family == AF_INET) return Py_BuildValue("(si)", host, port);
    const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)address;
    return Py_BuildValue("(siII)", host, port, (unsigned)ntohl(v6->sin6_flowinfo),
                         (unsigned)v6->sin6_scope_id);
}

/* Where drain reads to: one set for the process (the GIL serialises the readers). */
static uint8_t drain_slots[DRAIN_BATCH][DRAIN_SLOT];
static int draining = 0;

/* An event loop reader for a UDP socket: every datagram waiting (up to DRAIN_ROUNDS
 * batches), RTP taken here, the rest to original(data, addr) as the transport's own
 * reader would hand them to its protocol, read errors to error_received(exc). */
static PyObject *Inbound_drain(InboundObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "drain(fd, original, error_received)");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "fd out of range");
        return NULL;
    }
    if (draining) Py_RETURN_NONE; /* re-entered from a callback: the next wake-up reads */
    draining = 1;
    PyObject *failed_type = NULL, *failed_value = NULL, *failed_traceback = NULL;
    struct mmsghdr messages[DRAIN_BATCH];
    struct iovec vectors[DRAIN_BATCH];
    struct sockaddr_storage addresses[DRAIN_BATCH];
    for (int round = 0; round < DRAIN_ROUNDS; round++) {
        memset(messages, 0, sizeof messages);
        for (int i = 0; i < DRAIN_BATCH; i++) {
            vectors[i].iov_base = drain_slots[i];
            vectors[i].iov_len = DRAIN_SLOT;
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            messages[i].msg_hdr.msg_name = &addresses[i];
            messages[i].msg_hdr.msg_namelen = sizeof addresses[i];
        }
        int count = recvmmsg((int)fd, messages, DRAIN_BATCH, MSG_DONTWAIT, NULL);
        if (count < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && failed_type == NULL) {
                PyObject *error = PyObject_CallFunction(PyExc_OSError, "is", errno,
                                                        strerror(errno));
                PyObject *result =
                    error != NULL ? PyObject_CallOneArg(args[2], error) : NULL;
                Py_XDECREF(error);
                if (result == NULL)
                    PyErr_Fetch(&failed_type, &failed_value, &failed_traceback);
                Py_XDECREF(result);
            }
            break;
        }
        for (int i = 0; i < count; i++) {
            const uint8_t *data = drain_slots[i];
            size_t size = messages[i].msg_len;
            self->drained++;
            if (messages[i].msg_hdr.msg_flags & MSG_TRUNC) {
                self->truncated++;
                continue;
            }
            int code = inbound_datagram(self, data, size);
            if (code == INBOUND_PASS) {
                PyObject *bytes = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)size);
                PyObject *address = bytes != NULL ? make_address(&addresses[i]) : NULL;
                PyObject *result = address != NULL ? PyObject_CallFunctionObjArgs(
                                                         args[1], bytes, address, NULL)
                                                   : NULL;
                Py_XDECREF(bytes);
                Py_XDECREF(address);
                code = result == NULL ? -1 : 0;
                Py_XDECREF(result);
            }
            /* One failing packet does not lose the rest of the batch: the first error
             * is raised (and logged by the event loop) once all are handed on. */
            if (code < 0) {
                if (failed_type == NULL)
                    PyErr_Fetch(&failed_type, &failed_value, &failed_traceback);
                else
                    PyErr_Clear();
            }
        }
        if (count < DRAIN_BATCH) break;
    }
    draining = 0;
    if (failed_type != NULL) {
        PyErr_Restore(failed_type, failed_value, failed_traceback);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Inbound_get_srtp(InboundObject *self, void *closure) {
    (void)closure;
    return Py_NewRef(self->srtp != NULL ? self->srtp : Py_None);
}

static int Inbound_set_srtp(InboundObject *self, PyObject *value, void *closure) {
    (void)closure;
    if (value != NULL && value != Py_None && !rr_is_srtp_context(value)) {
        PyErr_SetString(PyExc_TypeError, "srtp must be a SrtpContext or None");
        return -1;
    }
    PyObject *old = self->srtp;
    self->srtp = value == NULL || value == Py_None ? NULL : Py_NewRef(value);
    Py_XDECREF(old);
    return 0;
}

static PyObject *Inbound_get_abs_id(InboundObject *self, void *closure) {
    (void)closure;
    if (!self->has_abs_id) Py_RETURN_NONE;
    return PyLong_FromLongLong(self->abs_id);
}

static int Inbound_set_abs_id(InboundObject *self, PyObject *value, void *closure) {
    (void)closure;
    if (value == NULL || value == Py_None) {
        self->has_abs_id = 0;
        return 0;
    }
    long long id = PyLong_AsLongLong(value);
    if (id == -1 && PyErr_Occurred()) return -1;
    self->abs_id = id;
    self->has_abs_id = 1;
    return 0;
}

static PyObject *Inbound_get_streams(InboundObject *self, void *closure) {
    (void)closure;
    PyObject *dict = PyDict_New();
    if (dict == NULL) return NULL;
    for (int i = 0; i < self->count; i++) {
        PyObject *key = PyLong_FromUnsignedLong(self->streams[i]->ssrc);
        if (key == NULL || PyDict_SetItem(dict, key, (PyObject *)self->streams[i]) < 0) {
            Py_XDECREF(key);
            Py_DECREF(dict);
            return NULL;
        }
        Py_DECREF(key);
    }
    return dict;
}

static PyMemberDef Inbound_members[] = {
    {"unreadable", T_ULONGLONG, offsetof(InboundObject, unreadable), 0,
     "RTP datagrams refused by SRTP or the parser."},
    {"ignored", T_ULONGLONG, offsetof(InboundObject, ignored), 0,
     "RTP packets of new SSRCs beyond max_streams (learn counts the ones it refuses)."},
    {"truncated", T_ULONGLONG, offsetof(InboundObject, truncated), 0,
     "Datagrams drain dropped for being longer than it reads."},
    {"drained", T_ULONGLONG, offsetof(InboundObject, drained), 0,
     "Datagrams drain read (all kinds)."},
    {NULL}};

static PyGetSetDef Inbound_getset[] = {
    {"srtp", (getter)Inbound_get_srtp, (setter)Inbound_set_srtp,
     "The inbound SrtpContext, or None until the keys are known.", NULL},
    {"abs_send_time_id", (getter)Inbound_get_abs_id, (setter)Inbound_set_abs_id,
     "The abs-send-time header extension's id, or None.", NULL},
    {"streams", (getter)Inbound_get_streams, NULL, "SSRC -> Stream (a copy).", NULL},
    {NULL}};

static PyMethodDef Inbound_methods[] = {
    {"datagram", (PyCFunction)Inbound_datagram, METH_O,
     "datagram(data) -> int: take one datagram; INBOUND_PASS when it is not RTP (or "
     "before the keys) and the caller passes it on."},
    {"datagram_received", (PyCFunction)(void (*)(void))Inbound_datagram_received,
     METH_FASTCALL,
     "datagram_received(original, data, addr): datagram(data), and original(data, addr) "
     "for what it passes on."},
    {"drain", (PyCFunction)(void (*)(void))Inbound_drain, METH_FASTCALL,
     "drain(fd, original, error_received): an event-loop reader for a UDP socket: read "
     "every datagram waiting with recvmmsg(2), RTP taken here, the rest to "
     "original(data, addr), read errors to error_received(exc)."},
    {NULL}};

static PyTypeObject InboundType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.Inbound",
    .tp_basicsize = sizeof(InboundObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Inbound(max_streams, learn, ready): the RTP arriving on one DTLS transport, "
              "decrypted, parsed and handed to its streams.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Inbound_init,
    .tp_traverse = (traverseproc)Inbound_traverse,
    .tp_clear = (inquiry)Inbound_clear,
    .tp_dealloc = (destructor)Inbound_dealloc,
    .tp_methods = Inbound_methods,
    .tp_members = Inbound_members,
    .tp_getset = Inbound_getset,
};

/* -- parse, for the differential test against rtc.rtp.parse --------------------- */

static PyObject *parse_rtp_py(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "parse_rtp(data, abs_send_time_id=None)");
        return NULL;
    }
    int has_abs_id = nargs == 2 && args[1] != Py_None;
    long long abs_id = 0;
    if (has_abs_id) {
        abs_id = PyLong_AsLongLong(args[1]);
        if (abs_id == -1 && PyErr_Occurred()) return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) return NULL;
    parsed p;
    PyObject *view = parse_rtp(data.buf, (size_t)data.len, abs_id, has_abs_id, &p) < 0
                         ? Py_NewRef(Py_None)
                         : make_view(&p);
    PyBuffer_Release(&data);
    return view;
}

static PyMethodDef inbound_functions[] = {
    {"parse_rtp", (PyCFunction)(void (*)(void))parse_rtp_py, METH_FASTCALL,
     "parse_rtp(data, abs_send_time_id=None) -> RtpView | None: rtc.rtp.parse, in C."},
    {NULL}};

int rr_register_inbound(PyObject *module) {
    PyTypeObject *types[] = {&NackType, &ReceiverType, &StreamType, &InboundType};
    const char *names[] = {"NackGenerator", "Receiver", "Stream", "Inbound"};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        if (PyType_Ready(types[i]) < 0) return -1;
        if (PyModule_AddObjectRef(module, names[i], (PyObject *)types[i]) < 0) return -1;
    }
    if (PyModule_AddFunctions(module, inbound_functions) < 0) return -1;
    if (PyModule_AddIntConstant(module, "INBOUND_HANDLED", INBOUND_HANDLED) < 0 ||
        PyModule_AddIntConstant(module, "INBOUND_PASS", INBOUND_PASS) < 0 ||
        PyModule_AddIntConstant(module, "INBOUND_UNREADABLE", INBOUND_UNREADABLE) < 0 ||
        PyModule_AddIntConstant(module, "INBOUND_IGNORED", INBOUND_IGNORED) < 0)
        return -1;
    return 0;
}
