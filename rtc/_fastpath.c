/* The relay's per-packet work in C: SRTP (RFC 3711, RFC 7714) and RTP header writing.
 *
 * Python keeps the decisions (which packet goes to whom, keyframe gating,
 * statistics, NACK); this module does what every packet costs: decrypting an
 * inbound packet, and for each subscriber writing its header (sequence,
 * timestamp, SSRC, payload type, MID and abs-send-time extensions, VP8
 * picture id, RTX's original sequence number) and encrypting it, in one call
 * that makes one bytes object.
 *
 * SRTP is done with OpenSSL's EVP directly, not libsrtp: Debian's libsrtp2 is
 * built without OpenSSL and so has no AES-GCM, which aiortc negotiates first
 * with browsers. The three profiles aiortc offers are implemented:
 * AEAD_AES_256_GCM, AEAD_AES_128_GCM (RFC 7714) and AES128_CM_HMAC_SHA1_80
 * (RFC 3711), with the key derivation, rollover counter estimate and replay
 * window (1024 packets, as aiortc configures libsrtp) of RFC 3711.
 * tests/test_fastpath.py checks every profile byte for byte against
 * pylibsrtp (libsrtp), which aiortc uses for everything else.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "native/rr.h"

#define PROFILE_AES128_CM_SHA1_80 1
#define PROFILE_AEAD_AES_128_GCM 7
#define PROFILE_AEAD_AES_256_GCM 8

/* SSRCs one context keeps state for; a browser connection has at most a few
 * (audio, video and their retransmission streams). Packets of further SSRCs are
 * refused rather than remembered. */
#define MAX_SSRCS 32
#define REPLAY_WINDOW 1024
#define REPLAY_WORDS (REPLAY_WINDOW / 64)
/* Larger than any RTP packet a browser sends or the relay writes. */
#define MAX_PACKET RR_MAX_PACKET

typedef struct {
    uint32_t ssrc;
    int used;
    uint32_t roc;
    uint16_t s_l;          /* highest sequence number seen (RFC 3711 appendix A) */
    uint64_t window[REPLAY_WORDS]; /* bit k: index (roc<<16|s_l) - k was received */
} StreamState;

typedef struct {
    PyObject_HEAD
    int profile;
    int gcm;
    int outbound;
    size_t tag_size;
    EVP_CIPHER_CTX *cipher;
    EVP_MAC_CTX *mac; /* AES-CM profile only */
    uint8_t salt[14];
    size_t salt_size;
    StreamState streams[MAX_SSRCS];
} SrtpObject;

/* -- key derivation (RFC 3711 section 4.3, used by RFC 7714 too) ------------ */

static int derive(const uint8_t *master_key, size_t key_size, const uint8_t *master_salt,
                  size_t master_salt_size, uint8_t label, uint8_t *out, size_t out_size) {
    uint8_t iv[16] = {0};
    uint8_t zeros[64] = {0};
    int written = 0;
    int ok = 0;
    /* x = (label << 48) XOR master salt (the salt zero-padded to 112 bits), IV = x * 2^16 */
    memcpy(iv, master_salt, master_salt_size);
    iv[7] ^= label;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return 0;
    const EVP_CIPHER *aes = key_size == 32 ? EVP_aes_256_ctr() : EVP_aes_128_ctr();
    if (out_size <= sizeof zeros && EVP_EncryptInit_ex(ctx, aes, NULL, master_key, iv) == 1 &&
        EVP_EncryptUpdate(ctx, out, &written, zeros, (int)out_size) == 1 &&
        (size_t)written == out_size)
        ok = 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

/* -- per-SSRC state ----------------------------------------------------------- */

static StreamState *stream_for(SrtpObject *self, uint32_t ssrc) {
    StreamState *free_slot = NULL;
    for (int i = 0; i < MAX_SSRCS; i++) {
        StreamState *s = &self->streams[i];
        if (s->used && s->ssrc == ssrc) return s;
        if (!s->used && free_slot == NULL) free_slot = s;
    }
    return free_slot; /* NULL when full; a fresh one is marked used by the caller */
}

/* The packet index for `seq` (RFC 3711 appendix A). */
static uint64_t estimate_index(const StreamState *s, uint16_t seq) {
    uint32_t roc = s->roc;
    if (s->s_l < 32768) {
        if ((int)seq - (int)s->s_l > 32768) roc = s->roc - 1;
    } else {
        if ((int)s->s_l - 32768 > (int)seq) roc = s->roc + 1;
    }
    return ((uint64_t)roc << 16) | seq;
}

static void advance(StreamState *s, uint64_t index) {
    uint64_t current = ((uint64_t)s->roc << 16) | s->s_l;
    if (index > current) {
        uint64_t shift = index - current;
        if (shift >= REPLAY_WINDOW) {
            memset(s->window, 0, sizeof s->window);
        } else {
            unsigned words = (unsigned)(shift / 64), bits = (unsigned)(shift % 64);
            for (int i = REPLAY_WORDS - 1; i >= 0; i--) {
                uint64_t value = 0;
                if (i - (int)words >= 0) {
                    value = s->window[i - words] << bits;
                    if (bits && i - (int)words - 1 >= 0)
                        value |= s->window[i - words - 1] >> (64 - bits);
                }
                s->window[i] = value;
            }
        }
        s->window[0] |= 1;
        s->roc = (uint32_t)(index >> 16);
        s->s_l = (uint16_t)index;
    } else {
        uint64_t back = current - index;
        if (back < REPLAY_WINDOW) s->window[back / 64] |= (uint64_t)1 << (back % 64);
    }
}

/* 0: fresh; -1: a replay or older than the window. */
static int replay_check(const StreamState *s, uint64_t index) {
    uint64_t current = ((uint64_t)s->roc << 16) | s->s_l;
    if (index > current) return 0;
    uint64_t back = current - index;
    if (back >= REPLAY_WINDOW) return -1;
    return (s->window[back / 64] >> (back % 64)) & 1 ? -1 : 0;
}

/* -- RTP header ----------------------------------------------------------------- */

/* Length of the RTP header (fixed part, CSRCs, extension), or 0 if malformed. */
static size_t header_size(const uint8_t *data, size_t size) {
    if (size < 12 || (data[0] >> 6) != 2) return 0;
    size_t offset = 12 + 4 * (size_t)(data[0] & 0x0F);
    if (data[0] & 0x10) {
        if (offset + 4 > size) return 0;
        size_t words = ((size_t)data[offset + 2] << 8) | data[offset + 3];
        offset += 4 + 4 * words;
    }
    return offset > size ? 0 : offset;
}

static uint32_t read32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void write32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* -- the cipher ----------------------------------------------------------------- */

static void gcm_iv(const SrtpObject *self, uint32_t ssrc, uint64_t index, uint8_t iv[12]) {
    memset(iv, 0, 12);
    write32(iv + 2, ssrc);
    write32(iv + 6, (uint32_t)(index >> 16));
    iv[10] = (uint8_t)(index >> 8);
    iv[11] = (uint8_t)index;
    for (int i = 0; i < 12; i++) iv[i] ^= self->salt[i];
}

static void ctr_iv(const SrtpObject *self, uint32_t ssrc, uint64_t index, uint8_t iv[16]) {
    memset(iv, 0, 16);
    memcpy(iv, self->salt, 14);
    iv[4] ^= (uint8_t)(ssrc >> 24);
    iv[5] ^= (uint8_t)(ssrc >> 16);
    iv[6] ^= (uint8_t)(ssrc >> 8);
    iv[7] ^= (uint8_t)ssrc;
    for (int i = 0; i < 6; i++) iv[8 + i] ^= (uint8_t)(index >> (40 - 8 * i));
}

/* HMAC-SHA1 over the packet and the rollover counter, truncated to 80 bits. */
static int cm_tag(SrtpObject *self, const uint8_t *data, size_t size, uint32_t roc,
                  uint8_t tag[10]) {
    uint8_t roc_bytes[4], full[EVP_MAX_MD_SIZE];
    size_t full_size = 0;
    write32(roc_bytes, roc);
    if (EVP_MAC_init(self->mac, NULL, 0, NULL) != 1 || EVP_MAC_update(self->mac, data, size) != 1 ||
        EVP_MAC_update(self->mac, roc_bytes, 4) != 1 ||
        EVP_MAC_final(self->mac, full, &full_size, sizeof full) != 1 || full_size < 10)
        return 0;
    memcpy(tag, full, 10);
    return 1;
}

/* Encrypts `packet` (header of `hsize` bytes, then payload) in place and writes the tag
 * after it. `packet` has room for tag_size more bytes. */
static int seal(SrtpObject *self, uint8_t *packet, size_t hsize, size_t size, uint32_t ssrc,
                uint64_t index) {
    int written = 0;
    if (self->gcm) {
        uint8_t iv[12];
        gcm_iv(self, ssrc, index, iv);
        if (EVP_EncryptInit_ex(self->cipher, NULL, NULL, NULL, iv) != 1 ||
            EVP_EncryptUpdate(self->cipher, NULL, &written, packet, (int)hsize) != 1 ||
            (size > hsize && EVP_EncryptUpdate(self->cipher, packet + hsize, &written,
                                               packet + hsize, (int)(size - hsize)) != 1) ||
            EVP_EncryptFinal_ex(self->cipher, packet + size, &written) != 1 ||
            EVP_CIPHER_CTX_ctrl(self->cipher, EVP_CTRL_GCM_GET_TAG, 16, packet + size) != 1)
            return 0;
        return 1;
    }
    uint8_t iv[16];
    ctr_iv(self, ssrc, index, iv);
    if (EVP_EncryptInit_ex(self->cipher, NULL, NULL, NULL, iv) != 1 ||
        (size > hsize && EVP_EncryptUpdate(self->cipher, packet + hsize, &written, packet + hsize,
                                           (int)(size - hsize)) != 1))
        return 0;
    return cm_tag(self, packet, size, (uint32_t)(index >> 16), packet + size);
}

/* Protects a plaintext packet of `size` bytes in place; `packet` has room for the tag.
 * 0 when there is nothing to protect (not RTP, too many SSRCs, OpenSSL failed). */
static int protect_buffer(SrtpObject *self, uint8_t *packet, size_t size) {
    size_t hsize = header_size(packet, size);
    if (hsize == 0) return 0;
    uint32_t ssrc = read32(packet + 8);
    uint16_t seq = (uint16_t)((packet[2] << 8) | packet[3]);
    StreamState *s = stream_for(self, ssrc);
    if (s == NULL) return 0;
    if (!s->used) {
        memset(s, 0, sizeof *s);
        s->used = 1;
        s->ssrc = ssrc;
        s->s_l = seq;
    }
    uint64_t index = estimate_index(s, seq);
    /* The sender's own packets: a repeat (a retransmission without RTX) is allowed,
     * as aiortc allows it (allow_repeat_tx). */
    if (!seal(self, packet, hsize, size, ssrc, index)) return 0;
    advance(s, index);
    return 1;
}

/* Protects a plaintext packet already laid out in a new bytes object of size + tag. */
static PyObject *protect_into(SrtpObject *self, PyObject *out, size_t size) {
    if (protect_buffer(self, (uint8_t *)PyBytes_AS_STRING(out), size)) return out;
    Py_DECREF(out);
    Py_RETURN_NONE;
}

/* -- SrtpContext ------------------------------------------------------------------ */

static void Srtp_dealloc(SrtpObject *self) {
    EVP_CIPHER_CTX_free(self->cipher);
    EVP_MAC_CTX_free(self->mac);
    OPENSSL_cleanse(self->salt, sizeof self->salt);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Srtp_init(SrtpObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"profile", "key_and_salt", "outbound", NULL};
    int profile, outbound;
    Py_buffer material;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iy*p", keywords, &profile, &material,
                                     &outbound))
        return -1;
    size_t key_size, salt_size;
    switch (profile) {
    case PROFILE_AES128_CM_SHA1_80: key_size = 16; salt_size = 14; break;
    case PROFILE_AEAD_AES_128_GCM: key_size = 16; salt_size = 12; break;
    case PROFILE_AEAD_AES_256_GCM: key_size = 32; salt_size = 12; break;
    default:
        PyBuffer_Release(&material);
        PyErr_Format(PyExc_ValueError, "unknown SRTP profile %d", profile);
        return -1;
    }
    if ((size_t)material.len != key_size + salt_size) {
        PyBuffer_Release(&material);
        PyErr_Format(PyExc_ValueError, "SRTP profile %d needs %zu bytes of key and salt, not %zd",
                     profile, key_size + salt_size, material.len);
        return -1;
    }
    const uint8_t *master = material.buf;
    uint8_t session_key[32], auth_key[20];
    int ok = derive(master, key_size, master + key_size, salt_size, 0x00, session_key, key_size) &&
             derive(master, key_size, master + key_size, salt_size, 0x02, self->salt, salt_size);
    if (ok && profile == PROFILE_AES128_CM_SHA1_80)
        ok = derive(master, key_size, master + key_size, salt_size, 0x01, auth_key, 20);
    PyBuffer_Release(&material);
    EVP_CIPHER_CTX_free(self->cipher);
    EVP_MAC_CTX_free(self->mac);
    self->mac = NULL;
    memset(self->streams, 0, sizeof self->streams);
    self->profile = profile;
    self->gcm = profile != PROFILE_AES128_CM_SHA1_80;
    self->outbound = outbound;
    self->salt_size = salt_size;
    self->tag_size = self->gcm ? 16 : 10;
    self->cipher = EVP_CIPHER_CTX_new();
    if (ok && self->cipher != NULL) {
        const EVP_CIPHER *cipher = profile == PROFILE_AEAD_AES_256_GCM   ? EVP_aes_256_gcm()
                                   : profile == PROFILE_AEAD_AES_128_GCM ? EVP_aes_128_gcm()
                                                                         : EVP_aes_128_ctr();
        if (outbound || !self->gcm)
            ok = EVP_EncryptInit_ex(self->cipher, cipher, NULL, session_key, NULL) == 1;
        else
            ok = EVP_DecryptInit_ex(self->cipher, cipher, NULL, session_key, NULL) == 1;
    } else {
        ok = 0;
    }
    if (ok && !self->gcm) {
        EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        self->mac = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
        EVP_MAC_free(hmac);
        OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA1", 0),
                               OSSL_PARAM_construct_end()};
        ok = self->mac != NULL && EVP_MAC_init(self->mac, auth_key, 20, params) == 1;
    }
    OPENSSL_cleanse(session_key, sizeof session_key);
    OPENSSL_cleanse(auth_key, sizeof auth_key);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up the SRTP context");
        return -1;
    }
    return 0;
}

static PyObject *Srtp_protect(SrtpObject *self, PyObject *arg) {
    Py_buffer in;
    if (!self->outbound) {
        PyErr_SetString(PyExc_ValueError, "an inbound SRTP context cannot protect");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) return NULL;
    if (in.len > MAX_PACKET) {
        PyBuffer_Release(&in);
        Py_RETURN_NONE;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, in.len + (Py_ssize_t)self->tag_size);
    if (out == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    memcpy(PyBytes_AS_STRING(out), in.buf, (size_t)in.len);
    size_t size = (size_t)in.len;
    PyBuffer_Release(&in);
    return protect_into(self, out, size);
}

/* Checks and decrypts one SRTP packet into `plain` (room for `size` bytes; not `data`).
 * The plaintext size, or -1 if it is refused: malformed, not authentic, or a replay. */
static Py_ssize_t unprotect_into(SrtpObject *self, const uint8_t *data, size_t size,
                                 uint8_t *plain) {
    if (self->outbound || size > MAX_PACKET || size < self->tag_size) return -1;
    size_t plain_size = size - self->tag_size;
    size_t hsize = header_size(data, plain_size);
    if (hsize == 0) return -1;
    uint32_t ssrc = read32(data + 8);
    uint16_t seq = (uint16_t)((data[2] << 8) | data[3]);
    StreamState *s = stream_for(self, ssrc);
    if (s == NULL) return -1;
    StreamState fresh;
    StreamState *state = s;
    if (!s->used) {
        /* Remembered only once a packet of this SSRC authenticates. */
        memset(&fresh, 0, sizeof fresh);
        fresh.used = 1;
        fresh.ssrc = ssrc;
        fresh.s_l = seq;
        state = &fresh;
    }
    uint64_t index = estimate_index(state, seq);
    if (state->used && state != &fresh && replay_check(state, index) != 0) return -1;
    int written = 0;
    if (self->gcm) {
        uint8_t iv[12], tag[16];
        gcm_iv(self, ssrc, index, iv);
        memcpy(tag, data + plain_size, 16);
        memcpy(plain, data, hsize);
        if (EVP_DecryptInit_ex(self->cipher, NULL, NULL, NULL, iv) != 1 ||
            EVP_DecryptUpdate(self->cipher, NULL, &written, data, (int)hsize) != 1 ||
            (plain_size > hsize &&
             EVP_DecryptUpdate(self->cipher, plain + hsize, &written, data + hsize,
                               (int)(plain_size - hsize)) != 1) ||
            EVP_CIPHER_CTX_ctrl(self->cipher, EVP_CTRL_GCM_SET_TAG, 16, tag) != 1 ||
            EVP_DecryptFinal_ex(self->cipher, plain + plain_size, &written) != 1)
            return -1;
    } else {
        uint8_t tag[10], iv[16];
        if (!cm_tag(self, data, plain_size, (uint32_t)(index >> 16), tag) ||
            CRYPTO_memcmp(tag, data + plain_size, 10) != 0)
            return -1;
        memcpy(plain, data, hsize);
        ctr_iv(self, ssrc, index, iv);
        if (EVP_EncryptInit_ex(self->cipher, NULL, NULL, NULL, iv) != 1 ||
            (plain_size > hsize && EVP_EncryptUpdate(self->cipher, plain + hsize, &written,
                                                     data + hsize, (int)(plain_size - hsize)) != 1))
            return -1;
    }
    if (state == &fresh) *s = fresh;
    advance(s, index);
    return (Py_ssize_t)plain_size;
}

static PyObject *Srtp_unprotect(SrtpObject *self, PyObject *arg) {
    Py_buffer in;
    if (self->outbound) {
        PyErr_SetString(PyExc_ValueError, "an outbound SRTP context cannot unprotect");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) return NULL;
    size_t size = (size_t)in.len;
    if (size > MAX_PACKET || size < self->tag_size) {
        PyBuffer_Release(&in);
        Py_RETURN_NONE;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(size - self->tag_size));
    if (out == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    Py_ssize_t plain_size =
        unprotect_into(self, in.buf, size, (uint8_t *)PyBytes_AS_STRING(out));
    PyBuffer_Release(&in);
    if (plain_size < 0) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

static PyMethodDef Srtp_methods[] = {
    {"protect", (PyCFunction)Srtp_protect, METH_O,
     "protect(packet) -> bytes | None: encrypt and authenticate one RTP packet."},
    {"unprotect", (PyCFunction)Srtp_unprotect, METH_O,
     "unprotect(packet) -> bytes | None: check and decrypt one SRTP packet; None if it "
     "is malformed, fails authentication or is a replay."},
    {NULL}};

static PyTypeObject SrtpType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.SrtpContext",
    .tp_basicsize = sizeof(SrtpObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SRTP for RTP packets of one direction of one DTLS transport.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Srtp_init,
    .tp_dealloc = (destructor)Srtp_dealloc,
    .tp_methods = Srtp_methods,
};

/* For the other files of the module (rtc/native/rr.h). */
int rr_is_srtp_context(PyObject *o) { return PyObject_TypeCheck(o, &SrtpType); }

Py_ssize_t rr_srtp_unprotect(PyObject *context, const uint8_t *data, size_t size,
                             uint8_t *plain) {
    return unprotect_into((SrtpObject *)context, data, size, plain);
}

/* -- Destination ------------------------------------------------------------------- */

/* A socket (the nominated ICE pair's, or the media port's) and the remote address,
 * resolved once rather than per packet. */
typedef struct {
    PyObject_HEAD
    int fd;
    struct sockaddr_storage address;
    socklen_t address_size;
} DestinationObject;

static int Destination_init(DestinationObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"fd", "host", "port", NULL};
    int fd, port;
    const char *host;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "isi", keywords, &fd, &host, &port))
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port %d out of range", port);
        return -1;
    }
    memset(&self->address, 0, sizeof self->address);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&self->address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&self->address;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        self->address_size = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        self->address_size = sizeof *v6;
    } else {
        PyErr_Format(PyExc_ValueError, "not a numeric IPv4 or IPv6 address: %s", host);
        return -1;
    }
    self->fd = fd;
    return 0;
}

static PyTypeObject DestinationType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.Destination",
    .tp_basicsize = sizeof(DestinationObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Destination(fd, host, port): where HeaderWriter.send sends.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Destination_init,
};

/* -- HeaderWriter ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    uint32_t ssrc;
    uint8_t first;
    uint8_t prefix[24]; /* extension header and elements, abs-send-time value excluded */
    size_t prefix_size;
    size_t suffix_size;
    int with_abs;
} WriterObject;

static int Writer_init(WriterObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"ssrc", "mid", "mid_id", "abs_id", NULL};
    unsigned long ssrc;
    const char *mid = NULL;
    Py_ssize_t mid_size = 0;
    PyObject *mid_id_obj, *abs_id_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "kz#OO", keywords, &ssrc, &mid, &mid_size,
                                     &mid_id_obj, &abs_id_obj))
        return -1;
    long mid_id = mid_id_obj == Py_None ? -1 : PyLong_AsLong(mid_id_obj);
    long abs_id = abs_id_obj == Py_None ? -1 : PyLong_AsLong(abs_id_obj);
    if (PyErr_Occurred()) return -1;
    self->ssrc = (uint32_t)ssrc;
    uint8_t elements[20];
    size_t count = 0;
    /* The same choices as rtc.rtp.HeaderWriter: one-byte ids only (1..14). */
    if (mid != NULL && mid_id >= 1 && mid_id <= 14 && mid_size >= 1 && mid_size <= 16) {
        elements[count++] = (uint8_t)((mid_id << 4) | (mid_size - 1));
        memcpy(elements + count, mid, (size_t)mid_size);
        count += (size_t)mid_size;
    }
    self->with_abs = abs_id >= 1 && abs_id <= 14;
    if (self->with_abs) elements[count++] = (uint8_t)((abs_id << 4) | 2);
    size_t size = count + (self->with_abs ? 3 : 0);
    size_t words = (size + 3) / 4;
    if (words) {
        self->first = 0x90;
        self->prefix[0] = 0xBE;
        self->prefix[1] = 0xDE;
        self->prefix[2] = (uint8_t)(words >> 8);
        self->prefix[3] = (uint8_t)words;
        memcpy(self->prefix + 4, elements, count);
        self->prefix_size = 4 + count;
        self->suffix_size = words * 4 - size;
    } else {
        self->first = 0x80;
        self->prefix_size = 0;
        self->suffix_size = 0;
    }
    return 0;
}

/* Where a VP8 payload descriptor keeps its picture id: offset 2, 7 or 15 bits (RFC 7741). */
static int vp8_picture_id_bits(const uint8_t *payload, size_t size) {
    if (size < 3 || !(payload[0] & 0x80) || !(payload[1] & 0x80)) return 0;
    if (payload[2] & 0x80) return size >= 4 ? 15 : 0;
    return 7;
}

/* The arguments of seal() and send(), checked. */
typedef struct {
    SrtpObject *srtp;
    long payload_type, sequence_number, picture_id, original;
    unsigned long timestamp;
    unsigned long long ntp;
    int marker;
} SealArgs;

static int parse_seal_args(PyObject *const *args, Py_ssize_t nargs, SealArgs *a, Py_buffer *payload) {
    if (nargs < 7 || nargs > 9) {
        PyErr_SetString(PyExc_TypeError, "seal() takes 7 to 9 arguments");
        return 0;
    }
    if (!PyObject_TypeCheck(args[0], &SrtpType)) {
        PyErr_SetString(PyExc_TypeError, "seal() needs an SrtpContext");
        return 0;
    }
    a->srtp = (SrtpObject *)args[0];
    if (!a->srtp->outbound) {
        PyErr_SetString(PyExc_ValueError, "an inbound SRTP context cannot protect");
        return 0;
    }
    a->payload_type = PyLong_AsLong(args[1]);
    a->sequence_number = PyLong_AsLong(args[2]);
    a->timestamp = PyLong_AsUnsignedLongMask(args[3]);
    a->marker = PyObject_IsTrue(args[4]);
    a->ntp = PyLong_AsUnsignedLongLongMask(args[5]);
    a->picture_id = nargs > 7 ? PyLong_AsLong(args[7]) : -1;
    a->original = nargs > 8 ? PyLong_AsLong(args[8]) : -1;
    if (PyErr_Occurred() || a->marker < 0) return 0;
    return PyObject_GetBuffer(args[6], payload, PyBUF_SIMPLE) == 0;
}

static size_t sealed_size_raw(WriterObject *self, const SrtpObject *srtp, long original,
                              size_t payload_size) {
    return 12 + self->prefix_size + (self->with_abs ? 3 : 0) + self->suffix_size +
           (original >= 0 ? 2 : 0) + payload_size + srtp->tag_size;
}

static size_t sealed_size(WriterObject *self, const SealArgs *a, const Py_buffer *payload) {
    return sealed_size_raw(self, a->srtp, a->original, (size_t)payload->len);
}

/* Writes the plaintext packet into `p` (sealed_size bytes of room) and protects it. */
static int build_raw(WriterObject *self, const SealArgs *a, const uint8_t *payload,
                     size_t payload_size, uint8_t *p) {
    p[0] = self->first;
    p[1] = (uint8_t)((a->marker ? 0x80 : 0) | (a->payload_type & 0x7F));
    p[2] = (uint8_t)(a->sequence_number >> 8);
    p[3] = (uint8_t)a->sequence_number;
    write32(p + 4, (uint32_t)a->timestamp);
    write32(p + 8, self->ssrc);
    size_t at = 12;
    memcpy(p + at, self->prefix, self->prefix_size);
    at += self->prefix_size;
    if (self->with_abs) {
        uint32_t abs = (uint32_t)((a->ntp >> 14) & 0xFFFFFF);
        p[at++] = (uint8_t)(abs >> 16);
        p[at++] = (uint8_t)(abs >> 8);
        p[at++] = (uint8_t)abs;
    }
    memset(p + at, 0, self->suffix_size);
    at += self->suffix_size;
    if (a->original >= 0) {
        p[at++] = (uint8_t)(a->original >> 8);
        p[at++] = (uint8_t)a->original;
    }
    uint8_t *body = p + at;
    memcpy(body, payload, payload_size);
    if (a->picture_id >= 0) {
        int bits = vp8_picture_id_bits(body, payload_size);
        if (bits == 15) {
            body[2] = (uint8_t)(0x80 | ((a->picture_id >> 8) & 0x7F));
            body[3] = (uint8_t)a->picture_id;
        } else if (bits == 7) {
            body[2] = (uint8_t)(a->picture_id & 0x7F);
        }
    }
    return protect_buffer(a->srtp, p, at + payload_size);
}

static int build(WriterObject *self, const SealArgs *a, const Py_buffer *payload, uint8_t *p) {
    return build_raw(self, a, payload->buf, (size_t)payload->len, p);
}

/* seal(srtp, payload_type, sequence_number, timestamp, marker, ntp, payload,
 *      picture_id=-1, original_sequence_number=-1) -> bytes | None */
static PyObject *Writer_seal(WriterObject *self, PyObject *const *args, Py_ssize_t nargs) {
    SealArgs a;
    Py_buffer payload;
    if (!parse_seal_args(args, nargs, &a, &payload)) return NULL;
    size_t size = sealed_size(self, &a, &payload);
    if (size > MAX_PACKET) {
        PyBuffer_Release(&payload);
        Py_RETURN_NONE;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (out == NULL) {
        PyBuffer_Release(&payload);
        return NULL;
    }
    int ok = build(self, &a, &payload, (uint8_t *)PyBytes_AS_STRING(out));
    PyBuffer_Release(&payload);
    if (ok) return out;
    Py_DECREF(out);
    Py_RETURN_NONE;
}

/* send(destination, srtp, ...the rest as seal()) -> int: writes, protects and sends the
 * packet with one sendto(2) on the destination's socket, with no Python object made.
 * 0: sent; an errno (EAGAIN: the kernel's queue is full); -1: nothing to send. */
static PyObject *Writer_send(WriterObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || !PyObject_TypeCheck(args[0], &DestinationType)) {
        PyErr_SetString(PyExc_TypeError, "send() needs a Destination first");
        return NULL;
    }
    DestinationObject *dest = (DestinationObject *)args[0];
    SealArgs a;
    Py_buffer payload;
    if (!parse_seal_args(args + 1, nargs - 1, &a, &payload)) return NULL;
    uint8_t packet[MAX_PACKET];
    size_t size = sealed_size(self, &a, &payload);
    int ok = size <= sizeof packet && build(self, &a, &payload, packet);
    PyBuffer_Release(&payload);
    if (!ok) return PyLong_FromLong(-1);
    ssize_t sent = sendto(dest->fd, packet, size, 0, (struct sockaddr *)&dest->address,
                          dest->address_size);
    return PyLong_FromLong(sent < 0 ? errno : 0);
}

static PyMethodDef Writer_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))Writer_seal, METH_FASTCALL,
     "seal(srtp, payload_type, sequence_number, timestamp, marker, ntp, payload, "
     "picture_id=-1, original_sequence_number=-1) -> bytes | None: the SRTP packet."},
    {"send", (PyCFunction)(void (*)(void))Writer_send, METH_FASTCALL,
     "send(destination, srtp, ...as seal()) -> int: seal and sendto(2) at once; 0 when "
     "sent, else the errno (EAGAIN: kernel queue full), -1 when there was nothing to send."},
    {NULL}};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.HeaderWriter",
    .tp_basicsize = sizeof(WriterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Writes and protects the RTP packets of one outgoing stream.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_methods = Writer_methods,
};

/* For the other files of the module (rtc/native/rr.h). */
int rr_is_header_writer(PyObject *o) { return PyObject_TypeCheck(o, &WriterType); }

int rr_is_destination(PyObject *o) { return PyObject_TypeCheck(o, &DestinationType); }

Py_ssize_t rr_writer_seal(PyObject *writer, PyObject *srtp, int payload_type,
                          uint16_t sequence_number, uint32_t timestamp, int marker, uint64_t ntp,
                          const uint8_t *payload, size_t payload_size, int picture_id,
                          int original, uint8_t *out, size_t capacity) {
    SrtpObject *context = (SrtpObject *)srtp;
    WriterObject *self = (WriterObject *)writer;
    if (!context->outbound) return -1;
    size_t size = sealed_size_raw(self, context, original, payload_size);
    if (size > capacity) return -1;
    SealArgs a = {context, payload_type, sequence_number, picture_id, original, timestamp, ntp,
                  marker};
    if (!build_raw(self, &a, payload, payload_size, out)) return -1;
    return (Py_ssize_t)size;
}

int rr_destination_send(PyObject *destination, const uint8_t *data, size_t size) {
    DestinationObject *dest = (DestinationObject *)destination;
    ssize_t sent =
        sendto(dest->fd, data, size, 0, (struct sockaddr *)&dest->address, dest->address_size);
    return sent < 0 ? errno : 0;
}

/* -- module ----------------------------------------------------------------------- */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "rtc._fastpath",
    "The relay's per-packet work in C (SRTP, RTP header writing); see rtc/_fastpath.c.", -1,
    NULL};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&SrtpType) < 0 || PyType_Ready(&WriterType) < 0 ||
        PyType_Ready(&DestinationType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    /* The other files' types (rtc/native/): fan-out, REMB, inbound path, frames. */
    if (rr_register_fanout(m) < 0 || rr_register_remb(m) < 0 || rr_register_inbound(m) < 0 ||
        rr_register_frames(m) < 0 || rr_register_pipe_out(m) < 0 || rr_register_pipe_in(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SrtpType);
    Py_INCREF(&WriterType);
    Py_INCREF(&DestinationType);
    if (PyModule_AddObject(m, "SrtpContext", (PyObject *)&SrtpType) < 0 ||
        PyModule_AddObject(m, "HeaderWriter", (PyObject *)&WriterType) < 0 ||
        PyModule_AddObject(m, "Destination", (PyObject *)&DestinationType) < 0 ||
        PyModule_AddIntConstant(m, "EAGAIN", EAGAIN) < 0 ||
        PyModule_AddIntConstant(m, "PROFILE_AES128_CM_SHA1_80", PROFILE_AES128_CM_SHA1_80) < 0 ||
        PyModule_AddIntConstant(m, "PROFILE_AEAD_AES_128_GCM", PROFILE_AEAD_AES_128_GCM) < 0 ||
        PyModule_AddIntConstant(m, "PROFILE_AEAD_AES_256_GCM", PROFILE_AEAD_AES_256_GCM) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
