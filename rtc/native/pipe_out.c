/* The pipe between nodes, sending side, in C (rtc/pipe.py's _OutgoingStream and
 * PipeEndpoint's batching, sealing and sending).
 *
 * PipeWriter: one per PipeEndpoint on the native path. It keeps what
 * PipeEndpoint._queue, _flush and _send_datagram keep per datagram: the batch of
 * messages waiting for each destination node (a PipeDestination), the sender epoch
 * and counter, the HMAC-SHA256 or AES-128-GCM key, and the counters. Python calls
 * it once per flush cycle (on_pending, then flush): nothing per packet.
 *
 * PipeOut: one per _OutgoingStream, a member of its source's Fanout beside the
 * Lanes. It does _OutgoingStream.push_packet line for line: the restart at a
 * keyframe with its sequence offset, the CODEC message ahead of every keyframe and
 * of a new codec's first packet, then the RTP message. Python keeps the codec (it
 * hands the PipeOut its JSON body) and activates it, as it does a Lane.
 *
 * The datagrams are the Python path's byte for byte (tests/test_fastpath.py feeds
 * both the same packets with the same epoch).
 */
#include "rr.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>
#include <structmember.h>
#include <sys/socket.h>

/* As rtc.pipe: VERSION, HEADER_SIZE (!B8sQ), TAG_SIZE, MESSAGE_HEADER_SIZE, MAX_BODY. */
#define PIPE_VERSION 2
#define HEADER_SIZE 17
#define TAG_SIZE 16
#define MESSAGE_HEADER_SIZE 7
#define MAX_BODY 0xFFFF
/* rtc.pipe's room is at most _RECEIVE_SIZE (65,535) less header and tag. */
#define MAX_ROOM (65535 - HEADER_SIZE - TAG_SIZE)
/* rtc.pipe.MessageType. */
#define MESSAGE_RTP 1
#define MESSAGE_CODEC 2

/* -- PipeDestination ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    struct sockaddr_storage address;
    socklen_t address_size;
    PyObject *to;    /* (host, port), for Python's transmit */
    size_t room;     /* bytes of messages one datagram carries */
    uint8_t *buffer; /* header, messages, room for the tag; grows for one oversized message */
    size_t capacity; /* of buffer */
    size_t size;     /* bytes of messages queued */
    char pending;    /* in the writer's list for the next flush */
} PipeDestinationObject;

static PyTypeObject PipeDestinationType;

static int PipeDestination_traverse(PipeDestinationObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->to);
    return 0;
}

static void PipeDestination_dealloc(PipeDestinationObject *self) {
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->to);
    PyMem_Free(self->buffer);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Makes room for `size` bytes of messages. 0, or -1 with MemoryError. */
static int destination_reserve(PipeDestinationObject *self, size_t size) {
    size_t needed = HEADER_SIZE + size + TAG_SIZE;
    if (needed <= self->capacity) return 0;
    uint8_t *buffer = PyMem_Realloc(self->buffer, needed);
    if (buffer == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->buffer = buffer;
    self->capacity = needed;
    return 0;
}

static PyMemberDef PipeDestination_members[] = {
    {"to", T_OBJECT, offsetof(PipeDestinationObject, to), READONLY, "(host, port)."},
    {"room", T_PYSSIZET, offsetof(PipeDestinationObject, room), READONLY,
     "Bytes of messages one datagram carries."},
    {"queued", T_PYSSIZET, offsetof(PipeDestinationObject, size), READONLY,
     "Bytes of messages waiting."},
    {NULL}};

static PyTypeObject PipeDestinationType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.PipeDestination",
    .tp_basicsize = sizeof(PipeDestinationObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One destination node of a PipeWriter: its address and its batch "
              "(PipeWriter.destination makes them).",
    .tp_dealloc = (destructor)PipeDestination_dealloc,
    .tp_traverse = (traverseproc)PipeDestination_traverse,
    .tp_members = PipeDestination_members,
};

/* -- PipeWriter ---------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int fd; /* the endpoint's socket (it owns it); -1 once closed */
    char encrypt;
    uint8_t epoch[8];
    unsigned long long counter;
    uint8_t mac_key[32];
    EVP_MAC_CTX *mac;       /* HMAC-SHA256 (not encrypt) */
    EVP_CIPHER_CTX *cipher; /* AES-128-GCM (encrypt) */
    PyObject *on_pending;   /* called when a flush cycle's first message is queued */
    PyObject *transmit;     /* None, or transmit(datagram, to) instead of sendto(2) */
    PyObject *pending;      /* list of PipeDestination, in the order their batches started */
    unsigned long long sent, messages_sent, errors;
} PipeWriterObject;

static PyTypeObject PipeWriterType;

static int PipeWriter_traverse(PipeWriterObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->on_pending);
    Py_VISIT(self->transmit);
    Py_VISIT(self->pending);
    return 0;
}

static int PipeWriter_clear(PipeWriterObject *self) {
    Py_CLEAR(self->on_pending);
    Py_CLEAR(self->transmit);
    Py_CLEAR(self->pending);
    return 0;
}

static void PipeWriter_dealloc(PipeWriterObject *self) {
    PyObject_GC_UnTrack(self);
    PipeWriter_clear(self);
    EVP_MAC_CTX_free(self->mac);
    EVP_CIPHER_CTX_free(self->cipher);
    OPENSSL_cleanse(self->mac_key, sizeof self->mac_key);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* PipeWriter(fd, epoch, key, encrypt, on_pending): key is the 32-byte HMAC key, or
 * with encrypt the epoch's 16-byte AES-128-GCM key. */
static PyObject *PipeWriter_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"fd", "epoch", "key", "encrypt", "on_pending", NULL};
    int fd, encrypt;
    Py_buffer epoch, key;
    PyObject *on_pending;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iy*y*pO", keywords, &fd, &epoch, &key,
                                     &encrypt, &on_pending))
        return NULL;
    PipeWriterObject *self = NULL;
    if (epoch.len != 8 || key.len != (encrypt ? 16 : 32)) {
        PyErr_SetString(PyExc_ValueError,
                        "a pipe writer takes an 8-byte epoch and a 32-byte HMAC key "
                        "(16 bytes for AES-128-GCM)");
        goto done;
    }
    if (!PyCallable_Check(on_pending)) {
        PyErr_SetString(PyExc_TypeError, "on_pending must be callable");
        goto done;
    }
    self = (PipeWriterObject *)type->tp_alloc(type, 0);
    if (self == NULL) goto done;
    self->fd = fd;
    self->encrypt = (char)encrypt;
    memcpy(self->epoch, epoch.buf, 8);
    Py_INCREF(on_pending);
    self->on_pending = on_pending;
    self->pending = PyList_New(0);
    if (self->pending == NULL) {
        Py_CLEAR(self);
        goto done;
    }
    int ok;
    if (encrypt) {
        self->cipher = EVP_CIPHER_CTX_new();
        ok = self->cipher != NULL &&
             EVP_EncryptInit_ex(self->cipher, EVP_aes_128_gcm(), NULL, key.buf, NULL) == 1;
    } else {
        memcpy(self->mac_key, key.buf, 32);
        EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        self->mac = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
        EVP_MAC_free(hmac);
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
            OSSL_PARAM_construct_end()};
        ok = self->mac != NULL && EVP_MAC_init(self->mac, self->mac_key, 32, params) == 1;
    }
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up the pipe's key");
        Py_CLEAR(self);
    }
done:
    PyBuffer_Release(&epoch);
    PyBuffer_Release(&key);
    return (PyObject *)self;
}

/* Seals the batch of `destination` (header, messages, tag) in place and sends it:
 * PipeEndpoint._send_datagram. 0, or -1 with a Python exception (from transmit). */
static int writer_send(PipeWriterObject *self, PipeDestinationObject *destination) {
    if (self->fd < 0) return 0;
    uint8_t *data = destination->buffer;
    size_t size = destination->size;
    unsigned long long counter = self->counter++;
    data[0] = PIPE_VERSION;
    memcpy(data + 1, self->epoch, 8);
    for (int i = 0; i < 8; i++) data[9 + i] = (uint8_t)(counter >> (56 - 8 * i));
    int ok, written;
    if (self->encrypt) {
        uint8_t nonce[12] = {0};
        memcpy(nonce + 4, data + 9, 8);
        ok = EVP_EncryptInit_ex(self->cipher, NULL, NULL, NULL, nonce) == 1 &&
             EVP_EncryptUpdate(self->cipher, NULL, &written, data, HEADER_SIZE) == 1 &&
             (size == 0 || EVP_EncryptUpdate(self->cipher, data + HEADER_SIZE, &written,
                                             data + HEADER_SIZE, (int)size) == 1) &&
             EVP_EncryptFinal_ex(self->cipher, data + HEADER_SIZE + size, &written) == 1 &&
             EVP_CIPHER_CTX_ctrl(self->cipher, EVP_CTRL_GCM_GET_TAG, TAG_SIZE,
                                 data + HEADER_SIZE + size) == 1;
    } else {
        uint8_t full[EVP_MAX_MD_SIZE];
        size_t full_size = 0;
        ok = EVP_MAC_init(self->mac, NULL, 0, NULL) == 1 &&
             EVP_MAC_update(self->mac, data, HEADER_SIZE + size) == 1 &&
             EVP_MAC_final(self->mac, full, &full_size, sizeof full) == 1 &&
             full_size >= TAG_SIZE;
        if (ok) memcpy(data + HEADER_SIZE + size, full, TAG_SIZE);
    }
    if (!ok) {
        self->errors++;
        return 0;
    }
    size_t total = HEADER_SIZE + size + TAG_SIZE;
    if (self->transmit != NULL && self->transmit != Py_None) {
        PyObject *datagram = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)total);
        if (datagram == NULL) return -1;
        PyObject *result = PyObject_CallFunctionObjArgs(self->transmit, datagram,
                                                        destination->to, NULL);
        Py_DECREF(datagram);
        if (result == NULL) {
            /* As Python's _send_datagram: a failed send is counted, not raised. */
            if (!PyErr_ExceptionMatches(PyExc_OSError)) return -1;
            PyErr_Clear();
            self->errors++;
            return 0;
        }
        Py_DECREF(result);
        self->sent++;
        return 0;
    }
    ssize_t n;
    do {
        n = sendto(self->fd, data, total, 0, (struct sockaddr *)&destination->address,
                   destination->address_size);
    } while (n < 0 && errno == EINTR);
    /* A full send buffer or an unreachable node: media tolerates a lost datagram. */
    if (n < 0)
        self->errors++;
    else
        self->sent++;
    return 0;
}

/* PipeEndpoint._queue: one message (head, then body) for `destination`'s next datagram.
 * 0, or -1 with a Python exception (from on_pending or transmit, or out of memory). */
static int writer_queue(PipeWriterObject *self, PipeDestinationObject *destination,
                        const uint8_t *head, size_t head_size, const uint8_t *body,
                        size_t body_size) {
    /* Closed, or cleared by the collector (a cycle being freed): nothing more to send. */
    if (self->fd < 0 || self->pending == NULL || self->on_pending == NULL) return 0;
    if (body_size > MAX_BODY) {
        self->errors++;
        return 0;
    }
    size_t size = head_size + body_size;
    int first = 0;
    if (!destination->pending) {
        if (PyList_Append(self->pending, (PyObject *)destination) < 0) return -1;
        destination->pending = 1;
        first = PyList_GET_SIZE(self->pending) == 1;
    } else if (destination->size + size > destination->room && destination->size > 0) {
        if (writer_send(self, destination) < 0) return -1;
        destination->size = 0;
    }
    if (destination_reserve(destination, destination->size + size) < 0) return -1;
    uint8_t *at = destination->buffer + HEADER_SIZE + destination->size;
    if (head_size) memcpy(at, head, head_size);
    if (body_size) memcpy(at + head_size, body, body_size);
    destination->size += size;
    self->messages_sent++;
    if (first) {
        PyObject *result = PyObject_CallNoArgs(self->on_pending);
        if (result == NULL) return -1;
        Py_DECREF(result);
    }
    return 0;
}

/* destination(host, port, room): a destination node (host a numeric IP address). */
static PyObject *PipeWriter_destination(PipeWriterObject *self, PyObject *args) {
    (void)self;
    const char *host;
    int port;
    Py_ssize_t room;
    if (!PyArg_ParseTuple(args, "sin", &host, &port, &room)) return NULL;
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port %d out of range", port);
        return NULL;
    }
    if (room < MESSAGE_HEADER_SIZE + 1 || room > MAX_ROOM) {
        PyErr_Format(PyExc_ValueError, "a datagram's room for messages is 8 to %d bytes",
                     MAX_ROOM);
        return NULL;
    }
    PipeDestinationObject *made = PyObject_GC_New(PipeDestinationObject, &PipeDestinationType);
    if (made == NULL) return NULL;
    memset(&made->address, 0, sizeof made->address);
    made->to = NULL;
    made->buffer = NULL;
    made->capacity = made->size = 0;
    made->pending = 0;
    made->room = (size_t)room;
    PyObject_GC_Track(made);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&made->address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&made->address;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        made->address_size = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        made->address_size = sizeof *v6;
    } else {
        PyErr_Format(PyExc_ValueError, "not a numeric IPv4 or IPv6 address: %s", host);
        Py_DECREF(made);
        return NULL;
    }
    made->to = Py_BuildValue("(si)", host, port);
    if (made->to == NULL || destination_reserve(made, made->room) < 0) {
        Py_DECREF(made);
        return NULL;
    }
    return (PyObject *)made;
}

static int is_destination(PyObject *o) {
    if (PyObject_TypeCheck(o, &PipeDestinationType)) return 1;
    PyErr_SetString(PyExc_TypeError, "expected a PipeDestination");
    return 0;
}

/* queue(destination, head, body): PipeEndpoint._queue. */
static PyObject *PipeWriter_queue(PipeWriterObject *self, PyObject *const *args,
                                  Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "queue() takes 3 arguments");
        return NULL;
    }
    if (!is_destination(args[0])) return NULL;
    Py_buffer head, body;
    if (PyObject_GetBuffer(args[1], &head, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[2], &body, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&head);
        return NULL;
    }
    int failed = head.len > MAX_BODY ? (self->errors++, 0)
                                     : writer_queue(self, (PipeDestinationObject *)args[0],
                                                    head.buf, (size_t)head.len, body.buf,
                                                    (size_t)body.len);
    PyBuffer_Release(&head);
    PyBuffer_Release(&body);
    if (failed < 0) return NULL;
    Py_RETURN_NONE;
}

/* flush(): PipeEndpoint._flush, every batch started since the last, in that order. */
static PyObject *PipeWriter_flush(PipeWriterObject *self, PyObject *unused) {
    (void)unused;
    PyObject *pending = self->pending;
    if (pending == NULL || PyList_GET_SIZE(pending) == 0) Py_RETURN_NONE;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) return NULL;
    self->pending = fresh; /* what a transmit callback queues belongs to the next cycle */
    int failed = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pending); i++) {
        PipeDestinationObject *destination = (PipeDestinationObject *)PyList_GET_ITEM(pending, i);
        destination->pending = 0;
        if (!failed && destination->size > 0) failed = writer_send(self, destination) < 0;
        destination->size = 0;
    }
    Py_DECREF(pending);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

/* close(): the endpoint closed its socket; nothing more is queued or sent. */
static PyObject *PipeWriter_close(PipeWriterObject *self, PyObject *unused) {
    (void)unused;
    self->fd = -1;
    if (self->pending == NULL) Py_RETURN_NONE;
    Py_ssize_t count = PyList_GET_SIZE(self->pending);
    for (Py_ssize_t i = 0; i < count; i++) {
        PipeDestinationObject *destination =
            (PipeDestinationObject *)PyList_GET_ITEM(self->pending, i);
        destination->pending = 0;
        destination->size = 0;
    }
    if (PyList_SetSlice(self->pending, 0, count, NULL) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *PipeWriter_get_transmit(PipeWriterObject *self, void *closure) {
    (void)closure;
    PyObject *f = self->transmit ? self->transmit : Py_None;
    Py_INCREF(f);
    return f;
}

static int PipeWriter_set_transmit(PipeWriterObject *self, PyObject *value, void *closure) {
    (void)closure;
    if (value != NULL && value != Py_None && !PyCallable_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "transmit must be callable or None");
        return -1;
    }
    if (value == Py_None) value = NULL;
    Py_XINCREF(value);
    Py_XSETREF(self->transmit, value);
    return 0;
}

static PyObject *PipeWriter_get_epoch(PipeWriterObject *self, void *closure) {
    (void)closure;
    return PyBytes_FromStringAndSize((const char *)self->epoch, 8);
}

static PyObject *PipeWriter_get_closed(PipeWriterObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->fd < 0);
}

static PyGetSetDef PipeWriter_getset[] = {
    {"transmit", (getter)PipeWriter_get_transmit, (setter)PipeWriter_set_transmit,
     "None, or transmit(datagram, to) called instead of sendto(2) (tests, the benchmark).",
     NULL},
    {"epoch", (getter)PipeWriter_get_epoch, NULL, "The sender epoch.", NULL},
    {"closed", (getter)PipeWriter_get_closed, NULL, "Whether close() was called.", NULL},
    {NULL}};

static PyMemberDef PipeWriter_members[] = {
    {"counter", T_ULONGLONG, offsetof(PipeWriterObject, counter), READONLY,
     "The next datagram's counter."},
    {"sent", T_ULONGLONG, offsetof(PipeWriterObject, sent), READONLY, "Datagrams sent."},
    {"messages_sent", T_ULONGLONG, offsetof(PipeWriterObject, messages_sent), READONLY,
     "Messages queued."},
    {"errors", T_ULONGLONG, offsetof(PipeWriterObject, errors), READONLY,
     "Messages too large and datagrams that could not be sent."},
    {NULL}};

static PyMethodDef PipeWriter_methods[] = {
    {"destination", (PyCFunction)PipeWriter_destination, METH_VARARGS,
     "destination(host, port, room) -> PipeDestination: a node to send to."},
    {"queue", (PyCFunction)(void (*)(void))PipeWriter_queue, METH_FASTCALL,
     "queue(destination, head, body): one message for the destination's next datagram."},
    {"flush", (PyCFunction)PipeWriter_flush, METH_NOARGS,
     "Send every batch queued, in the order they were started."},
    {"close", (PyCFunction)PipeWriter_close, METH_NOARGS,
     "The socket closed: drop what waits, send nothing more."},
    {NULL}};

static PyTypeObject PipeWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.PipeWriter",
    .tp_basicsize = sizeof(PipeWriterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "PipeWriter(fd, epoch, key, encrypt, on_pending): a PipeEndpoint's batching, "
              "sealing and sending, in C.",
    .tp_new = PipeWriter_new,
    .tp_dealloc = (destructor)PipeWriter_dealloc,
    .tp_traverse = (traverseproc)PipeWriter_traverse,
    .tp_clear = (inquiry)PipeWriter_clear,
    .tp_methods = PipeWriter_methods,
    .tp_members = PipeWriter_members,
    .tp_getset = PipeWriter_getset,
};

/* -- PipeOut ------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PipeWriterObject *writer;
    PipeDestinationObject *destination;
    PyObject *codec_body; /* bytes: the CODEC message's body; NULL before set_codec */
    uint32_t stream_id;
    char active, announce, restarting;
    uint16_t sequence_offset, last_sequence;
} PipeOutObject;

static PyTypeObject PipeOutType;

static int PipeOut_traverse(PipeOutObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->writer);
    Py_VISIT(self->destination);
    Py_VISIT(self->codec_body);
    return 0;
}

static int PipeOut_clear(PipeOutObject *self) {
    self->active = 0;
    Py_CLEAR(self->writer);
    Py_CLEAR(self->destination);
    Py_CLEAR(self->codec_body);
    return 0;
}

static void PipeOut_dealloc(PipeOutObject *self) {
    PyObject_GC_UnTrack(self);
    PipeOut_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* PipeOut(writer, destination, stream_id). */
static PyObject *PipeOut_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"writer", "destination", "stream_id", NULL};
    PyObject *writer, *destination, *stream_id;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!O", keywords, &PipeWriterType, &writer,
                                     &PipeDestinationType, &destination, &stream_id))
        return NULL;
    unsigned long long id = PyLong_AsUnsignedLongLong(stream_id);
    if (id == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (id > 0xFFFFFFFFULL) {
        PyErr_SetString(PyExc_ValueError, "a stream id is a 32-bit number");
        return NULL;
    }
    PipeOutObject *self = (PipeOutObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    Py_INCREF(writer);
    self->writer = (PipeWriterObject *)writer;
    Py_INCREF(destination);
    self->destination = (PipeDestinationObject *)destination;
    self->stream_id = (uint32_t)id;
    return (PyObject *)self;
}

int rr_is_pipe_out(PyObject *o) { return PyObject_TypeCheck(o, &PipeOutType); }

int rr_pipe_out_active(PyObject *pipe_out) {
    PipeOutObject *self = (PipeOutObject *)pipe_out;
    return self->active && self->writer != NULL && self->codec_body != NULL;
}

void rr_pipe_out_deactivate(PyObject *pipe_out) { ((PipeOutObject *)pipe_out)->active = 0; }

static void put_message_header(uint8_t *out, int kind, uint32_t stream_id, size_t length) {
    out[0] = (uint8_t)kind;
    out[1] = (uint8_t)(stream_id >> 24);
    out[2] = (uint8_t)(stream_id >> 16);
    out[3] = (uint8_t)(stream_id >> 8);
    out[4] = (uint8_t)stream_id;
    out[5] = (uint8_t)(length >> 8);
    out[6] = (uint8_t)length;
}

/* _OutgoingStream.send_codec with the body Python set. 0, or -1 with an exception. */
static int pipe_out_send_codec(PipeOutObject *self) {
    if (self->codec_body == NULL || self->writer == NULL) return 0;
    size_t size = (size_t)PyBytes_GET_SIZE(self->codec_body);
    uint8_t head[MESSAGE_HEADER_SIZE];
    put_message_header(head, MESSAGE_CODEC, self->stream_id, size & 0xFFFF);
    return writer_queue(self->writer, self->destination, head, sizeof head,
                        (const uint8_t *)PyBytes_AS_STRING(self->codec_body), size);
}

int rr_pipe_out_forward(PyObject *pipe_out, const rr_packet *packet, int keyframe) {
    PipeOutObject *self = (PipeOutObject *)pipe_out;
    if (self->writer == NULL) return 0;
    if (self->restarting) {
        if (!keyframe) return 0;
        self->restarting = 0;
        self->sequence_offset = (uint16_t)(self->last_sequence + 1 - packet->sequence_number);
    }
    uint16_t sequence = (uint16_t)(packet->sequence_number + self->sequence_offset);
    self->last_sequence = sequence;
    /* The codec goes ahead of every keyframe too (see _OutgoingStream.push_packet). */
    if (self->announce || keyframe) {
        self->announce = 0;
        if (pipe_out_send_codec(self) < 0) return -1;
    }
    /* _RTP_MESSAGE: type, stream id, body length, marker|payload type, seq, timestamp. */
    uint8_t head[MESSAGE_HEADER_SIZE + 7];
    size_t length = 7 + packet->payload_size;
    put_message_header(head, MESSAGE_RTP, self->stream_id, length & 0xFFFF);
    if (length > MAX_BODY) {
        /* Python's struct.pack would raise on the length; nothing that large is RTP. */
        self->writer->errors++;
        return 0;
    }
    head[7] = (uint8_t)((packet->payload_type & 0x7F) | (packet->marker ? 0x80 : 0));
    head[8] = (uint8_t)(sequence >> 8);
    head[9] = (uint8_t)sequence;
    head[10] = (uint8_t)(packet->timestamp >> 24);
    head[11] = (uint8_t)(packet->timestamp >> 16);
    head[12] = (uint8_t)(packet->timestamp >> 8);
    head[13] = (uint8_t)packet->timestamp;
    return writer_queue(self->writer, self->destination, head, sizeof head, packet->payload,
                        packet->payload_size);
}

/* push(sequence_number, timestamp, marker, payload_type, payload, keyframe): one packet
 * (the one Python saw while activating this PipeOut). */
static PyObject *PipeOut_push(PipeOutObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "push() takes 6 arguments");
        return NULL;
    }
    uint32_t sequence, timestamp, payload_type;
    if (!rr_arg_u32(args[0], &sequence) || !rr_arg_u32(args[1], &timestamp) ||
        !rr_arg_u32(args[3], &payload_type))
        return NULL;
    int marker = PyObject_IsTrue(args[2]), keyframe = PyObject_IsTrue(args[5]);
    if (marker < 0 || keyframe < 0) return NULL;
    Py_buffer payload;
    if (PyObject_GetBuffer(args[4], &payload, PyBUF_SIMPLE) < 0) return NULL;
    rr_packet packet = {payload.buf, (size_t)payload.len, 0, timestamp, (uint16_t)sequence,
                        (uint8_t)(payload_type & 0x7F), (uint8_t)marker};
    int failed = rr_pipe_out_forward((PyObject *)self, &packet, keyframe);
    PyBuffer_Release(&payload);
    if (failed < 0) return NULL;
    Py_RETURN_NONE;
}

/* set_codec(body, announce): the codec's CODEC body; announce: it is a new codec, so
 * its first packet goes after a CODEC message even when it is not a keyframe. */
static PyObject *PipeOut_set_codec(PipeOutObject *self, PyObject *args) {
    PyObject *body;
    int announce;
    if (!PyArg_ParseTuple(args, "Sp", &body, &announce)) return NULL;
    if (PyBytes_GET_SIZE(body) > MAX_BODY) {
        PyErr_SetString(PyExc_ValueError, "a CODEC body is at most 65,535 bytes");
        return NULL;
    }
    Py_INCREF(body);
    Py_XSETREF(self->codec_body, body);
    if (announce) self->announce = 1;
    Py_RETURN_NONE;
}

static PyObject *PipeOut_send_codec(PipeOutObject *self, PyObject *unused) {
    (void)unused;
    if (pipe_out_send_codec(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *PipeOut_restart(PipeOutObject *self, PyObject *unused) {
    (void)unused;
    self->restarting = 1;
    Py_RETURN_NONE;
}

static PyObject *PipeOut_get_active(PipeOutObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->active);
}

static int PipeOut_set_active(PipeOutObject *self, PyObject *value, void *closure) {
    (void)closure;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "active cannot be deleted");
        return -1;
    }
    int active = PyObject_IsTrue(value);
    if (active < 0) return -1;
    if (active && self->codec_body == NULL) {
        PyErr_SetString(PyExc_ValueError, "set_codec() before activating a PipeOut");
        return -1;
    }
    self->active = (char)active;
    return 0;
}

static PyObject *PipeOut_get_restarting(PipeOutObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->restarting);
}

static PyGetSetDef PipeOut_getset[] = {
    {"active", (getter)PipeOut_get_active, (setter)PipeOut_set_active,
     "Whether the fan-out hands packets here (Python sets it after set_codec).", NULL},
    {"restarting", (getter)PipeOut_get_restarting, NULL,
     "Waiting for a keyframe to start again.", NULL},
    {NULL}};

static PyMemberDef PipeOut_members[] = {
    {"stream_id", T_UINT, offsetof(PipeOutObject, stream_id), READONLY, "The stream id."},
    {NULL}};

static PyMethodDef PipeOut_methods[] = {
    {"push", (PyCFunction)(void (*)(void))PipeOut_push, METH_FASTCALL,
     "push(sequence_number, timestamp, marker, payload_type, payload, keyframe): "
     "_OutgoingStream.push_packet."},
    {"set_codec", (PyCFunction)PipeOut_set_codec, METH_VARARGS,
     "set_codec(body, announce): the CODEC body; announce: a new codec."},
    {"send_codec", (PyCFunction)PipeOut_send_codec, METH_NOARGS,
     "Queue a CODEC message (nothing before set_codec)."},
    {"restart", (PyCFunction)PipeOut_restart, METH_NOARGS,
     "Start again at the source's next keyframe, numbered on."},
    {NULL}};

static PyTypeObject PipeOutType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.PipeOut",
    .tp_basicsize = sizeof(PipeOutObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "PipeOut(writer, destination, stream_id): one stream sent over the pipe, "
              "a member of a Fanout's lanes.",
    .tp_new = PipeOut_new,
    .tp_dealloc = (destructor)PipeOut_dealloc,
    .tp_traverse = (traverseproc)PipeOut_traverse,
    .tp_clear = (inquiry)PipeOut_clear,
    .tp_methods = PipeOut_methods,
    .tp_members = PipeOut_members,
    .tp_getset = PipeOut_getset,
};

static int add_type(PyObject *module, const char *name, PyTypeObject *type) {
    if (PyType_Ready(type) < 0) return -1;
    Py_INCREF(type);
    if (PyModule_AddObject(module, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

int rr_register_pipe_out(PyObject *module) {
    if (add_type(module, "PipeDestination", &PipeDestinationType) < 0 ||
        add_type(module, "PipeWriter", &PipeWriterType) < 0 ||
        add_type(module, "PipeOut", &PipeOutType) < 0)
        return -1;
    return 0;
}
