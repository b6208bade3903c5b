/* The pipe between nodes, receiving side, in C: PipeEndpoint._receive (rtc/pipe.py)
 * without Python per datagram or per packet.
 *
 * PipeReader, one per PipeEndpoint on the native path, does what _read_ready,
 * _receive, _open, _fresh, ReplayWindow, _split and PipePublisher._receive_rtp do,
 * with the same checks in the same order and the same counters: version, the tag
 * (HMAC-SHA256 truncated to 16 bytes, or AES-128-GCM under a key per sender epoch),
 * the messages adding up to the datagram, the replay window per (peer, epoch). An
 * RTP message of a stream whose Fanout takes its payload type goes to rr_fanout_push
 * directly; Python sees a packet only when the fan-out says so (publisher
 * ._on_native_leftover) or when the codec is not known yet (publisher._receive_rtp,
 * which asks for it). Every other message goes to on_message(host, port, kind,
 * stream_id, body), which is PipeEndpoint._receive_control: those are rare.
 *
 * Bounds: MAX_EPOCHS keys and windows, 4 * MAX_EPOCHS retired windows (as Python),
 * MAX_STREAMS streams; the buffers are fixed (one plaintext buffer per reader).
 */
#include "rr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <structmember.h>
#include <sys/socket.h>

/* rtc.pipe's constants: the layout of a datagram and of a message. */
#define VERSION 2
#define HEADER_SIZE 17 /* version 1, epoch 8, counter 8 */
#define TAG_SIZE 16
#define MESSAGE_HEADER_SIZE 7 /* type 1, stream id 4, body length 2 */
#define RTP_BODY_HEADER 7     /* marker|payload type 1, sequence number 2, timestamp 4 */
#define MESSAGE_RTP 1
#define REPLAY_WINDOW 128
#define MAX_EPOCHS 256
#define RETIRED (4 * MAX_EPOCHS)
#define RECEIVE_SIZE 65535 /* _RECEIVE_SIZE: what one recvfrom reads */
#define MAC_KEY_SIZE 32
#define AEAD_KEY_SIZE 16
/* Streams in at once: far more than a node's pairs need, and a bound on the table. */
#define MAX_STREAMS 65536
/* Datagrams per recvmmsg(2): a drain of DRAIN (64) is a few calls. */
#define DRAIN_BATCH 16
/* A host as the socket reports it: an IPv6 literal with a scope name at most. */
typedef struct {
    char host[RR_HOST_SIZE];
    int port;
} peer_t;

typedef struct {
    peer_t peer;
    uint8_t epoch[8];
} window_key;

/* ReplayWindow: bit i of mask set when counter top - i was seen. */
typedef struct {
    window_key key;
    int seen; /* top is -1 until the first counter */
    uint64_t top;
    unsigned __int128 mask;
} window_t;

typedef struct {
    uint8_t epoch[8];
    EVP_CIPHER_CTX *cipher;
} epoch_key;

typedef struct {
    uint32_t stream_id;
    peer_t peer;
    PyObject *fanout;    /* a Fanout, or NULL: then every packet goes to the publisher */
    PyObject *publisher; /* the PipePublisher */
} stream_t;

typedef struct {
    PyObject_HEAD
    EVP_MAC_CTX *mac;  /* HMAC-SHA256 under the MAC key, when not encrypting */
    PyObject *derive;  /* derive(epoch) -> the AES key of a sender epoch, when encrypting */
    PyObject *on_message;
    /* Keys of sender epochs that authenticated, oldest first (a ring). */
    epoch_key epochs[MAX_EPOCHS];
    int epoch_first, epoch_count;
    EVP_CIPHER_CTX *trial; /* for an epoch not seen yet: kept only if it authenticates */
    /* Replay windows, oldest first (a ring), and the keys of the windows let go. */
    window_t windows[MAX_EPOCHS];
    int window_first, window_count, window_last;
    window_key retired[RETIRED];
    int retired_first, retired_count;
    /* Streams in, sorted by stream id. */
    stream_t *streams;
    int stream_count, stream_capacity;
    uint8_t *plain; /* an opened datagram (RECEIVE_SIZE bytes), allocated when first needed */
    int busy;       /* a datagram is being handled: a callback may not start another */
    int closed;
    unsigned long long received, messages_received, malformed, unauthenticated, replayed,
        unknown_stream, wrong_address;
} PipeReaderObject;

static PyObject *str_receive_rtp, *str_leftover;

/* -- replay windows (ReplayWindow, PipeEndpoint._fresh) -------------------------- */

static int window_accept(window_t *w, uint64_t counter) {
    if (!w->seen || counter > w->top) {
        /* From top = -1 any shift is at least 1 on an empty mask: the mask becomes 1. */
        uint64_t shift = w->seen ? counter - w->top : REPLAY_WINDOW;
        w->mask = shift >= REPLAY_WINDOW ? 1 : (w->mask << shift) | 1;
        w->top = counter;
        w->seen = 1;
        return 1;
    }
    uint64_t distance = w->top - counter;
    if (distance >= REPLAY_WINDOW) return 0;
    unsigned __int128 bit = (unsigned __int128)1 << distance;
    if (w->mask & bit) return 0;
    w->mask |= bit;
    return 1;
}

static int same_key(const window_key *a, const window_key *b) {
    return a->peer.port == b->peer.port && memcmp(a->epoch, b->epoch, 8) == 0 &&
           strcmp(a->peer.host, b->peer.host) == 0;
}

static int fresh(PipeReaderObject *self, const window_key *key, uint64_t counter) {
    window_t *w = NULL;
    if (self->window_count > 0 && same_key(&self->windows[self->window_last].key, key)) {
        w = &self->windows[self->window_last];
    } else {
        for (int i = 0; i < self->window_count; i++) {
            int at = (self->window_first + i) % MAX_EPOCHS;
            if (same_key(&self->windows[at].key, key)) {
                w = &self->windows[at];
                self->window_last = at;
                break;
            }
        }
    }
    if (w == NULL) {
        for (int i = 0; i < self->retired_count; i++)
            if (same_key(&self->retired[(self->retired_first + i) % RETIRED], key)) return 0;
        if (self->window_count == MAX_EPOCHS) {
            /* The oldest window goes to the retired keys (a deque of RETIRED). */
            const window_key *old = &self->windows[self->window_first].key;
            if (self->retired_count == RETIRED) {
                self->retired[self->retired_first] = *old;
                self->retired_first = (self->retired_first + 1) % RETIRED;
            } else {
                self->retired[(self->retired_first + self->retired_count) % RETIRED] = *old;
                self->retired_count++;
            }
            self->window_first = (self->window_first + 1) % MAX_EPOCHS;
            self->window_count--;
        }
        int at = (self->window_first + self->window_count) % MAX_EPOCHS;
        self->window_count++;
        w = &self->windows[at];
        memset(w, 0, sizeof *w);
        w->key = *key;
        self->window_last = at;
    }
    return window_accept(w, counter);
}

/* -- authentication (the HMAC check, PipeEndpoint._open) ------------------------- */

/* 1 when the HMAC tag of `data` is right. */
static int mac_ok(PipeReaderObject *self, const uint8_t *data, size_t size) {
    uint8_t full[EVP_MAX_MD_SIZE];
    size_t full_size = 0;
    size_t end = size - TAG_SIZE;
    if (EVP_MAC_init(self->mac, NULL, 0, NULL) != 1 ||
        EVP_MAC_update(self->mac, data, end) != 1 ||
        EVP_MAC_final(self->mac, full, &full_size, sizeof full) != 1 || full_size < TAG_SIZE)
        return 0;
    return CRYPTO_memcmp(full, data + end, TAG_SIZE) == 0;
}

/* Opens `data` with `cipher` into `plain`: 1 when it authenticates. */
static int gcm_open(EVP_CIPHER_CTX *cipher, const uint8_t *data, size_t size, uint8_t *plain) {
    uint8_t iv[12] = {0}, tag[TAG_SIZE];
    int written = 0;
    size_t sealed = size - HEADER_SIZE - TAG_SIZE;
    memcpy(iv + 4, data + HEADER_SIZE - 8, 8);
    memcpy(tag, data + size - TAG_SIZE, TAG_SIZE);
    return EVP_DecryptInit_ex(cipher, NULL, NULL, NULL, iv) == 1 &&
           EVP_DecryptUpdate(cipher, NULL, &written, data, HEADER_SIZE) == 1 &&
           (sealed == 0 || EVP_DecryptUpdate(cipher, plain, &written, data + HEADER_SIZE,
                                             (int)sealed) == 1) &&
           EVP_CIPHER_CTX_ctrl(cipher, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, tag) == 1 &&
           EVP_DecryptFinal_ex(cipher, plain + sealed, &written) == 1;
}

/* _open: 1 and the messages in self->plain when the datagram authenticates, 0 when
 * not, -1 with a Python exception (derive failed). */
static int aead_open(PipeReaderObject *self, const uint8_t *data, size_t size) {
    const uint8_t *epoch = data + 1;
    for (int i = self->epoch_count - 1; i >= 0; i--) {
        epoch_key *known = &self->epochs[(self->epoch_first + i) % MAX_EPOCHS];
        if (memcmp(known->epoch, epoch, 8) == 0)
            return gcm_open(known->cipher, data, size, self->plain);
    }
    /* A new epoch: its key costs a derivation, and is kept only if it authenticates. */
    PyObject *key = PyObject_CallFunction(self->derive, "y#", (const char *)epoch, (Py_ssize_t)8);
    if (key == NULL) return -1;
    if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) != AEAD_KEY_SIZE) {
        Py_DECREF(key);
        PyErr_SetString(PyExc_ValueError, "derive must return a 16-byte key");
        return -1;
    }
    int ok = EVP_DecryptInit_ex(self->trial, EVP_aes_128_gcm(), NULL,
                                (const uint8_t *)PyBytes_AS_STRING(key), NULL) == 1;
    Py_DECREF(key);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up AES-128-GCM");
        return -1;
    }
    if (!gcm_open(self->trial, data, size, self->plain)) return 0;
    /* Kept: the trial context becomes the epoch's, the oldest one's (if full) the trial. */
    epoch_key *slot;
    if (self->epoch_count == MAX_EPOCHS) {
        slot = &self->epochs[self->epoch_first];
        self->epoch_first = (self->epoch_first + 1) % MAX_EPOCHS;
    } else {
        slot = &self->epochs[(self->epoch_first + self->epoch_count) % MAX_EPOCHS];
        self->epoch_count++;
    }
    EVP_CIPHER_CTX *spare = slot->cipher;
    slot->cipher = self->trial;
    memcpy(slot->epoch, epoch, 8);
    self->trial = spare != NULL ? spare : EVP_CIPHER_CTX_new();
    if (self->trial == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 1;
}

/* -- streams -------------------------------------------------------------------- */

/* The first stream with `stream_id` or a larger one. */
static int stream_lower_bound(const PipeReaderObject *self, uint32_t stream_id) {
    int low = 0, high = self->stream_count;
    while (low < high) {
        int middle = low + (high - low) / 2;
        if (self->streams[middle].stream_id < stream_id)
            low = middle + 1;
        else
            high = middle;
    }
    return low;
}

/* The stream (index) of `peer` with `stream_id`, or -1; *elsewhere set when the id is
 * known from another peer (wrong_address rather than unknown_stream). */
static int stream_find(const PipeReaderObject *self, const peer_t *peer, uint32_t stream_id,
                       int *elsewhere) {
    *elsewhere = 0;
    for (int i = stream_lower_bound(self, stream_id);
         i < self->stream_count && self->streams[i].stream_id == stream_id; i++) {
        const stream_t *s = &self->streams[i];
        if (s->peer.port == peer->port && strcmp(s->peer.host, peer->host) == 0) return i;
        *elsewhere = 1;
    }
    return -1;
}

static int parse_peer(PyObject *host, int port, peer_t *peer) {
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(host, &size);
    if (text == NULL) return -1;
    if (size >= RR_HOST_SIZE || (Py_ssize_t)strlen(text) != size) {
        PyErr_SetString(PyExc_ValueError, "not a host address");
        return -1;
    }
    memset(peer, 0, sizeof *peer);
    memcpy(peer->host, text, (size_t)size);
    peer->port = port;
    return 0;
}

/* -- one datagram (PipeEndpoint._receive) ---------------------------------------- */

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* publisher._on_native_leftover(payload_type, sequence_number, timestamp, marker,
 * payload): the part of a packet the fan-out leaves to Python. 0, or -1. */
static int leftover(PyObject *publisher, const rr_packet *packet) {
    PyObject *args[6] = {publisher,
                         PyLong_FromLong(packet->payload_type),
                         PyLong_FromLong(packet->sequence_number),
                         PyLong_FromUnsignedLong(packet->timestamp),
                         Py_NewRef(packet->marker ? Py_True : Py_False),
                         PyBytes_FromStringAndSize((const char *)packet->payload,
                                                   (Py_ssize_t)packet->payload_size)};
    PyObject *result = NULL;
    if (args[1] != NULL && args[2] != NULL && args[3] != NULL && args[5] != NULL)
        result = PyObject_VectorcallMethod(str_leftover, args, 6,
                                           NULL);
    for (int i = 1; i < 6; i++) Py_XDECREF(args[i]);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* One RTP message of stream `index` (PipePublisher._receive_rtp): 0, or -1 with an
 * exception. */
static int receive_rtp(PipeReaderObject *self, int index, const uint8_t *body, size_t size) {
    if (size < RTP_BODY_HEADER) {
        self->malformed++;
        return 0;
    }
    /* Held across the calls below, which may remove the stream. */
    PyObject *fanout = self->streams[index].fanout;
    PyObject *publisher = self->streams[index].publisher;
    rr_packet packet = {body + RTP_BODY_HEADER,
                        size - RTP_BODY_HEADER,
                        self->streams[index].stream_id,
                        be32(body + 3),
                        be16(body + 1),
                        (uint8_t)(body[0] & 0x7F),
                        (uint8_t)(body[0] >> 7)};
    Py_INCREF(publisher);
    int code = 0;
    if (fanout != NULL && rr_fanout_accepts(fanout, packet.payload_type)) {
        Py_INCREF(fanout);
        int more = rr_fanout_push(fanout, &packet);
        Py_DECREF(fanout);
        if (more < 0) {
            code = -1;
        } else if (more > 0) {
            code = leftover(publisher, &packet);
        }
    } else {
        /* No codec yet, or another one: Python asks for it (and rate limits that). */
        PyObject *data = PyBytes_FromStringAndSize((const char *)body, (Py_ssize_t)size);
        PyObject *start = PyLong_FromLong(0), *end = PyLong_FromSsize_t((Py_ssize_t)size);
        PyObject *result = NULL;
        if (data != NULL && start != NULL && end != NULL) {
            PyObject *call[] = {publisher, data, start, end};
            result = PyObject_VectorcallMethod(str_receive_rtp, call,
                                               4, NULL);
        }
        Py_XDECREF(data);
        Py_XDECREF(start);
        Py_XDECREF(end);
        if (result == NULL) {
            code = -1;
        } else {
            int accepted = PyObject_IsTrue(result);
            Py_DECREF(result);
            if (accepted < 0) code = -1;
            else if (!accepted) self->malformed++;
        }
    }
    Py_DECREF(publisher);
    return code;
}

/* on_message(host, port, kind, stream_id, body): any message but RTP. 0, or -1. */
static int receive_other(PipeReaderObject *self, const peer_t *peer, int kind, uint32_t stream_id,
                         const uint8_t *body, size_t size) {
    PyObject *result = PyObject_CallFunction(self->on_message, "siiky#", peer->host, peer->port,
                                             kind, (unsigned long)stream_id, (const char *)body,
                                             (Py_ssize_t)size);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* The messages of [start, end) fill it exactly (_split): their number, or 0 when not. */
static int count_messages(const uint8_t *data, size_t start, size_t end) {
    int count = 0;
    while (start < end) {
        if (end - start < MESSAGE_HEADER_SIZE) return 0;
        size_t length = be16(data + start + 5);
        start += MESSAGE_HEADER_SIZE;
        if (length > end - start) return 0;
        start += length;
        count++;
    }
    return count;
}

/* PipeEndpoint._receive for one datagram from `peer`: 0, or -1 with an exception (a
 * callback failed: the datagram's later messages are not handed on, as in Python). */
static int receive_datagram(PipeReaderObject *self, const uint8_t *datagram, size_t size,
                            const peer_t *peer) {
    if (size < HEADER_SIZE + TAG_SIZE || datagram[0] != VERSION) {
        self->malformed++;
        return 0;
    }
    const uint8_t *data = datagram;
    size_t start = HEADER_SIZE, end = size - TAG_SIZE;
    if (self->derive != NULL) {
        int opened = aead_open(self, datagram, size);
        if (opened < 0) return -1;
        if (opened == 0) {
            self->unauthenticated++;
            return 0;
        }
        data = self->plain;
        start = 0;
        end = size - HEADER_SIZE - TAG_SIZE;
    } else if (!mac_ok(self, datagram, size)) {
        self->unauthenticated++;
        return 0;
    }
    int count = count_messages(data, start, end);
    if (count == 0) {
        self->malformed++;
        return 0;
    }
    window_key key;
    memcpy(&key.peer, peer, sizeof key.peer);
    memcpy(key.epoch, datagram + 1, 8);
    uint64_t counter = 0;
    for (int i = 9; i < HEADER_SIZE; i++) counter = counter << 8 | datagram[i];
    if (!fresh(self, &key, counter)) {
        self->replayed++;
        return 0;
    }
    self->received++;
    self->messages_received += (unsigned long long)count;
    while (start < end) {
        int kind = data[start];
        uint32_t stream_id = be32(data + start + 1);
        size_t length = be16(data + start + 5);
        const uint8_t *body = data + start + MESSAGE_HEADER_SIZE;
        start += MESSAGE_HEADER_SIZE + length;
        int code = 0;
        if (kind == MESSAGE_RTP) {
            int elsewhere;
            int index = stream_find(self, peer, stream_id, &elsewhere);
            if (index < 0) {
                if (elsewhere)
                    self->wrong_address++;
                else
                    self->unknown_stream++;
            } else {
                code = receive_rtp(self, index, body, length);
            }
        } else {
            code = receive_other(self, peer, kind, stream_id, body, length);
        }
        if (code < 0) return -1;
    }
    return 0;
}

/* -- the Python type -------------------------------------------------------------- */

static void release_streams(PipeReaderObject *self) {
    stream_t *streams = self->streams;
    int count = self->stream_count;
    self->streams = NULL;
    self->stream_count = self->stream_capacity = 0;
    for (int i = 0; i < count; i++) {
        Py_XDECREF(streams[i].fanout);
        Py_XDECREF(streams[i].publisher);
    }
    PyMem_Free(streams);
}

static int PipeReader_traverse(PipeReaderObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->derive);
    Py_VISIT(self->on_message);
    for (int i = 0; i < self->stream_count; i++) {
        Py_VISIT(self->streams[i].fanout);
        Py_VISIT(self->streams[i].publisher);
    }
    return 0;
}

static int PipeReader_clear(PipeReaderObject *self) {
    Py_CLEAR(self->derive);
    Py_CLEAR(self->on_message);
    release_streams(self);
    return 0;
}

static void PipeReader_dealloc(PipeReaderObject *self) {
    PyObject_GC_UnTrack(self);
    PipeReader_clear(self);
    EVP_MAC_CTX_free(self->mac);
    for (int i = 0; i < MAX_EPOCHS; i++) EVP_CIPHER_CTX_free(self->epochs[i].cipher);
    EVP_CIPHER_CTX_free(self->trial);
    PyMem_Free(self->plain);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* PipeReader(mac_key, derive, on_message): mac_key (32 bytes) to check HMAC tags, or
 * derive(epoch) -> key to open AES-128-GCM datagrams; exactly one is not None. */
static int PipeReader_init(PipeReaderObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"mac_key", "derive", "on_message", NULL};
    PyObject *mac_key, *derive, *on_message;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO", keywords, &mac_key, &derive,
                                     &on_message))
        return -1;
    if (self->on_message != NULL || self->mac != NULL || self->derive != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a PipeReader is set up once");
        return -1;
    }
    if ((mac_key == Py_None) == (derive == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "give either mac_key or derive");
        return -1;
    }
    if (!PyCallable_Check(on_message) || (derive != Py_None && !PyCallable_Check(derive))) {
        PyErr_SetString(PyExc_TypeError, "on_message and derive must be callable");
        return -1;
    }
    if (mac_key != Py_None) {
        if (!PyBytes_Check(mac_key) || PyBytes_GET_SIZE(mac_key) != MAC_KEY_SIZE) {
            PyErr_SetString(PyExc_ValueError, "mac_key must be 32 bytes");
            return -1;
        }
        EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        self->mac = hmac != NULL ? EVP_MAC_CTX_new(hmac) : NULL;
        EVP_MAC_free(hmac);
        OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                               OSSL_PARAM_construct_end()};
        if (self->mac == NULL ||
            EVP_MAC_init(self->mac, (const uint8_t *)PyBytes_AS_STRING(mac_key), MAC_KEY_SIZE,
                         params) != 1) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up HMAC-SHA256");
            return -1;
        }
    } else {
        self->trial = EVP_CIPHER_CTX_new();
        self->plain = PyMem_Malloc(RECEIVE_SIZE);
        if (self->trial == NULL || self->plain == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->derive = Py_NewRef(derive);
    }
    self->on_message = Py_NewRef(on_message);
    return 0;
}

/* add_stream(host, port, stream_id, fanout, publisher): expect that stream from that
 * peer (PipeEndpoint.receive_stream); fanout is the publisher's Fanout or None. */
static PyObject *PipeReader_add_stream(PipeReaderObject *self, PyObject *args) {
    PyObject *host, *fanout, *publisher;
    int port;
    unsigned long stream_id;
    if (!PyArg_ParseTuple(args, "UikOO", &host, &port, &stream_id, &fanout, &publisher))
        return NULL;
    peer_t peer;
    if (parse_peer(host, port, &peer) < 0) return NULL;
    if (stream_id > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_ValueError, "stream ids are 32-bit numbers");
        return NULL;
    }
    if (fanout != Py_None && !rr_is_fanout(fanout)) {
        PyErr_SetString(PyExc_TypeError, "fanout must be a Fanout or None");
        return NULL;
    }
    int elsewhere;
    if (stream_find(self, &peer, (uint32_t)stream_id, &elsewhere) >= 0) {
        PyErr_SetString(PyExc_ValueError, "that stream is already expected");
        return NULL;
    }
    if (self->stream_count == self->stream_capacity) {
        if (self->stream_capacity >= MAX_STREAMS) {
            PyErr_SetString(PyExc_OverflowError, "too many streams in");
            return NULL;
        }
        int capacity = self->stream_capacity == 0 ? 16 : 2 * self->stream_capacity;
        stream_t *grown = PyMem_Realloc(self->streams, (size_t)capacity * sizeof *grown);
        if (grown == NULL) return PyErr_NoMemory();
        self->streams = grown;
        self->stream_capacity = capacity;
    }
    int at = stream_lower_bound(self, (uint32_t)stream_id);
    memmove(&self->streams[at + 1], &self->streams[at],
            (size_t)(self->stream_count - at) * sizeof *self->streams);
    stream_t *s = &self->streams[at];
    s->stream_id = (uint32_t)stream_id;
    s->peer = peer;
    s->fanout = fanout == Py_None ? NULL : Py_NewRef(fanout);
    s->publisher = Py_NewRef(publisher);
    self->stream_count++;
    Py_RETURN_NONE;
}

/* remove_stream(host, port, stream_id) -> bool: no longer expect it. */
static PyObject *PipeReader_remove_stream(PipeReaderObject *self, PyObject *args) {
    PyObject *host;
    int port;
    unsigned long stream_id;
    if (!PyArg_ParseTuple(args, "Uik", &host, &port, &stream_id)) return NULL;
    peer_t peer;
    if (parse_peer(host, port, &peer) < 0) return NULL;
    int elsewhere;
    int at = stream_id > 0xFFFFFFFFul ? -1 : stream_find(self, &peer, (uint32_t)stream_id,
                                                         &elsewhere);
    if (at < 0) Py_RETURN_FALSE;
    PyObject *fanout = self->streams[at].fanout, *publisher = self->streams[at].publisher;
    memmove(&self->streams[at], &self->streams[at + 1],
            (size_t)(self->stream_count - at - 1) * sizeof *self->streams);
    self->stream_count--;
    /* Released once the table is consistent: a finalizer may call back in. */
    Py_XDECREF(fanout);
    Py_XDECREF(publisher);
    Py_RETURN_TRUE;
}

static int begin(PipeReaderObject *self) {
    if (self->on_message == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the PipeReader is not set up");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the PipeReader is handling a datagram");
        return -1;
    }
    self->busy = 1;
    return 0;
}

/* receive(data, host, port): one datagram, as from that peer (tests, the benchmark). */
static PyObject *PipeReader_receive(PipeReaderObject *self, PyObject *args) {
    Py_buffer data;
    PyObject *host;
    int port;
    if (!PyArg_ParseTuple(args, "y*Ui", &data, &host, &port)) return NULL;
    if (data.len > RECEIVE_SIZE) {
        /* No socket reads more (drain's buffers, and the plaintext's, are this long). */
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "longer than a datagram is read");
        return NULL;
    }
    peer_t peer;
    if (parse_peer(host, port, &peer) < 0 || begin(self) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    int code = receive_datagram(self, data.buf, (size_t)data.len, &peer);
    self->busy = 0;
    PyBuffer_Release(&data);
    if (code < 0) return NULL;
    Py_RETURN_NONE;
}

/* The sender's address as Python's socket module reports it (host, port). */
static int peer_from(const struct sockaddr_storage *address, peer_t *peer) {
    memset(peer, 0, sizeof *peer);
    int port;
    if (rr_format_host(address, peer->host, &port) < 0) return -1;
    peer->port = port;
    return 0;
}

/* Where drain reads to: one set for the process (the GIL serialises the readers, and
 * `draining` keeps a callback from starting another drain over them). */
static uint8_t drain_slots[DRAIN_BATCH][RECEIVE_SIZE];
static int draining = 0;

/* drain(fd, limit) -> int: _read_ready. Reads the datagrams waiting on the socket, at
 * most `limit`, with recvmmsg(2), and handles each; returns how many it read. A socket
 * error (not EAGAIN/EINTR) ends the drain with OSError once what was read is handled;
 * a callback's exception does not lose the datagrams after it (the first is raised). */
static PyObject *PipeReader_drain(PipeReaderObject *self, PyObject *args) {
    int fd, limit;
    if (!PyArg_ParseTuple(args, "ii", &fd, &limit)) return NULL;
    if (draining) return PyLong_FromLong(0); /* re-entered: the next wake-up reads */
    if (begin(self) < 0) return NULL;
    draining = 1;
    self->closed = 0; /* a new wake-up of an open socket (_read_ready checks) */
    PyObject *failed_type = NULL, *failed_value = NULL, *failed_traceback = NULL;
    int socket_error = 0;
    long read = 0;
    struct mmsghdr messages[DRAIN_BATCH];
    struct iovec vectors[DRAIN_BATCH];
    struct sockaddr_storage addresses[DRAIN_BATCH];
    while (read < limit && !self->closed) {
        int want = limit - read < DRAIN_BATCH ? (int)(limit - read) : DRAIN_BATCH;
        memset(messages, 0, sizeof messages);
        for (int i = 0; i < want; i++) {
            vectors[i].iov_base = drain_slots[i];
            vectors[i].iov_len = RECEIVE_SIZE;
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            messages[i].msg_hdr.msg_name = &addresses[i];
            messages[i].msg_hdr.msg_namelen = sizeof addresses[i];
        }
        int count = recvmmsg(fd, messages, (unsigned)want, MSG_DONTWAIT, NULL);
        if (count < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) socket_error = errno;
            break;
        }
        for (int i = 0; i < count; i++) {
            read++;
            /* Closed by what a datagram set off: the rest is not handled (as in Python). */
            if (self->closed) break;
            size_t size = messages[i].msg_len;
            if (size > RECEIVE_SIZE) size = RECEIVE_SIZE;
            peer_t peer;
            if (peer_from(&addresses[i], &peer) < 0) {
                self->malformed++;
                continue;
            }
            if (receive_datagram(self, drain_slots[i], size, &peer) < 0) {
                if (failed_type == NULL)
                    PyErr_Fetch(&failed_type, &failed_value, &failed_traceback);
                else
                    PyErr_Clear();
            }
        }
        if (count < want) break;
    }
    draining = 0;
    self->busy = 0;
    if (failed_type != NULL) {
        PyErr_Restore(failed_type, failed_value, failed_traceback);
        return NULL;
    }
    if (socket_error != 0) {
        errno = socket_error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(read);
}

/* close(): the endpoint closed its socket; a drain under way stops after this datagram
 * (its fd may be another socket's by the next read). */
static PyObject *PipeReader_close(PipeReaderObject *self, PyObject *unused) {
    (void)unused;
    self->closed = 1;
    Py_RETURN_NONE;
}

static PyObject *PipeReader_get_streams(PipeReaderObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->stream_count);
}

static PyObject *PipeReader_get_epochs(PipeReaderObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->epoch_count);
}

static PyObject *PipeReader_get_windows(PipeReaderObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->window_count);
}

/* PipeEndpoint.dropped's reasons, with this reader's counts. */
static PyObject *PipeReader_get_dropped(PipeReaderObject *self, void *closure) {
    (void)closure;
    return Py_BuildValue("{sKsKsKsKsK}", "malformed", self->malformed, "unauthenticated",
                         self->unauthenticated, "replayed", self->replayed, "unknown_stream",
                         self->unknown_stream, "wrong_address", self->wrong_address);
}

static PyMemberDef PipeReader_members[] = {
    {"received", T_ULONGLONG, offsetof(PipeReaderObject, received), READONLY,
     "Datagrams taken (authentic, well formed, not replayed)."},
    {"messages_received", T_ULONGLONG, offsetof(PipeReaderObject, messages_received), READONLY,
     "Messages in the datagrams taken."},
    {NULL},
};

static PyGetSetDef PipeReader_getset[] = {
    {"streams", (getter)PipeReader_get_streams, NULL, "Streams expected.", NULL},
    {"epochs", (getter)PipeReader_get_epochs, NULL, "Sender epochs whose key is kept.", NULL},
    {"windows", (getter)PipeReader_get_windows, NULL, "Replay windows kept.", NULL},
    {"dropped", (getter)PipeReader_get_dropped, NULL, "What was dropped, by reason.", NULL},
    {NULL},
};

static PyMethodDef PipeReader_methods[] = {
    {"add_stream", (PyCFunction)PipeReader_add_stream, METH_VARARGS,
     "add_stream(host, port, stream_id, fanout, publisher): expect that stream."},
    {"remove_stream", (PyCFunction)PipeReader_remove_stream, METH_VARARGS,
     "remove_stream(host, port, stream_id) -> bool: no longer expect it."},
    {"receive", (PyCFunction)PipeReader_receive, METH_VARARGS,
     "receive(data, host, port): one datagram from that peer."},
    {"drain", (PyCFunction)PipeReader_drain, METH_VARARGS,
     "drain(fd, limit) -> int: read and handle up to limit waiting datagrams."},
    {"close", (PyCFunction)PipeReader_close, METH_NOARGS,
     "close(): stop a drain under way after the current datagram."},
    {NULL},
};

static PyTypeObject PipeReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.PipeReader",
    .tp_doc = "The receiving side of the pipe between nodes (rtc/pipe.py's PipeEndpoint).",
    .tp_basicsize = sizeof(PipeReaderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PipeReader_init,
    .tp_dealloc = (destructor)PipeReader_dealloc,
    .tp_traverse = (traverseproc)PipeReader_traverse,
    .tp_clear = (inquiry)PipeReader_clear,
    .tp_methods = PipeReader_methods,
    .tp_members = PipeReader_members,
    .tp_getset = PipeReader_getset,
};

int rr_register_pipe_in(PyObject *module) {
    str_receive_rtp = PyUnicode_InternFromString("_receive_rtp");
    str_leftover = PyUnicode_InternFromString("_on_native_leftover");
    if (str_receive_rtp == NULL || str_leftover == NULL) return -1;
    if (PyType_Ready(&PipeReaderType) < 0) return -1;
    if (PyModule_AddObjectRef(module, "PipeReader", (PyObject *)&PipeReaderType) < 0) return -1;
    return PyModule_AddIntConstant(module, "PIPE_MAX_STREAMS", MAX_STREAMS);
}
