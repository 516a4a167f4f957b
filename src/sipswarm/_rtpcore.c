/*
 * sipswarm._rtpcore: the per-packet RTP path in C (the pure-Python code stays as the fallback).
 *
 * Pure computation (no I/O; sipswarm.media.stats and media.rtp build on them):
 *   RecvBase     fields of RtpReceiveStats' fast path + receive_rtp() (RFC 3550 A.1 in-order
 *                packet, A.8 jitter); anything else goes to the subclass's _receive_slow().
 *   WriterBase   sequence/timestamp/ssrc/marker state of RtpPacketWriter (RFC 3550 5.1).
 *   SendBase     packets_sent/bytes_sent/send_errors of RtpSendStats.
 * I/O (used by sipswarm.engine only):
 *   Sender       per-session callable the media clock calls instead of _send_frame while the
 *                session is plain: header into a stack buffer, send(fd, MSG_DONTWAIT), count.
 *   Poller       one epoll of every plain connected RTP socket; poll() reads one datagram per
 *                ready socket, stamps it with CLOCK_MONOTONIC (time.monotonic()'s clock) and
 *                feeds the RecvBase in C. Telephone events go to a Python callback.
 * Nothing here raises on network input: bad datagrams are counted and dropped exactly as the
 * Python path counts them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_RTP_PACKET 1472
#define RECV_SIZE 2048
#define SEQ_MOD 65536

/* ---------------------------------------------------------------- RecvBase */

typedef struct {
    PyObject_HEAD
    long long ssrc; /* -1: None */
    int max_seq;
    int probation;
    long long cycles;
    uint64_t win_lo, win_hi; /* 128-packet duplicate window */
    long long unique;
    long long packets_received;
    long long bytes_received;
    double last_arrival;
    char has_last_arrival;
    char jitter_valid;
    double jitter;
    double jitter_max;
    long long last_ts;
    double last_arrival_ts;
    long long clock_rate;
    long long invalid_packets;
} RecvBase;

static PyObject *str_receive_slow;

/* The Python path's slow branch, with the datagram as bytes; returns pt or -1, -2 on error. */
static int
recv_slow(RecvBase *self, PyObject *data, double now)
{
    PyObject *nowobj = PyFloat_FromDouble(now);
    if (nowobj == NULL)
        return -2;
    PyObject *res = PyObject_CallMethodObjArgs((PyObject *)self, str_receive_slow, data, nowobj,
                                               NULL);
    Py_DECREF(nowobj);
    if (res == NULL)
        return -2;
    long pt = PyLong_AsLong(res);
    Py_DECREF(res);
    if (pt == -1 && PyErr_Occurred())
        return -2;
    return (int)pt;
}

/* RtpReceiveStats.receive_rtp: -1 invalid, the payload type, or 1000 for "take the slow path". */
static int
recv_fast(RecvBase *self, const unsigned char *p, Py_ssize_t size, double now)
{
    if (size < 12 || size > MAX_RTP_PACKET) {
        self->invalid_packets++;
        return -1;
    }
    int pt = p[1] & 0x7F;
    int seq = (p[2] << 8) | p[3];
    long long ts = ((long long)p[4] << 24) | (p[5] << 16) | (p[6] << 8) | p[7];
    long long ssrc = ((long long)p[8] << 24) | (p[9] << 16) | (p[10] << 8) | p[11];
    if (p[0] != 0x80 || ssrc != self->ssrc || ((seq - self->max_seq) & 0xFFFF) != 1 ||
        self->probation || (pt >= 72 && pt <= 76))
        return 1000;
    /* in-order next packet: RFC 3550 A.1 update_seq with udelta == 1 */
    self->max_seq = seq;
    if (seq == 0)
        self->cycles += SEQ_MOD;
    self->win_hi = (self->win_hi << 1) | (self->win_lo >> 63);
    self->win_lo = (self->win_lo << 1) | 1;
    self->unique++;
    self->packets_received++;
    self->bytes_received += size;
    self->last_arrival = now;
    self->has_last_arrival = 1;
    /* RFC 3550 6.4.1 jitter: J += (|D| - J) / 16, the same float operations as the Python path */
    if (self->jitter_valid) {
        long long tsd = ((ts - self->last_ts + 0x80000000LL) & 0xFFFFFFFFLL) - 0x80000000LL;
        double d = (now - self->last_arrival_ts) * (double)self->clock_rate - (double)tsd;
        double j = self->jitter;
        j += ((d >= 0 ? d : -d) - j) * 0.0625;
        self->jitter = j;
        if (j > self->jitter_max)
            self->jitter_max = j;
    }
    else {
        self->jitter_valid = 1;
    }
    self->last_ts = ts;
    self->last_arrival_ts = now;
    return pt;
}

static PyObject *
RecvBase_receive_rtp(RecvBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "receive_rtp(data, now) takes 2 arguments");
        return NULL;
    }
    double now = PyFloat_AsDouble(args[1]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int pt = recv_fast(self, (const unsigned char *)view.buf, view.len, now);
    PyBuffer_Release(&view);
    if (pt == 1000)
        pt = recv_slow(self, args[0], now);
    if (pt == -2)
        return NULL;
    return PyLong_FromLong(pt);
}

static PyObject *
RecvBase_get_ssrc(RecvBase *self, void *closure)
{
    if (self->ssrc < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(self->ssrc);
}

static int
RecvBase_set_ssrc(RecvBase *self, PyObject *value, void *closure)
{
    if (value == NULL || value == Py_None) {
        self->ssrc = -1;
        return 0;
    }
    long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > 0xFFFFFFFFLL) {
        PyErr_Format(PyExc_ValueError, "ssrc must be None or 0-4294967295, got %lld", v);
        return -1;
    }
    self->ssrc = v;
    return 0;
}

static PyObject *
RecvBase_get_last_arrival(RecvBase *self, void *closure)
{
    if (!self->has_last_arrival)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(self->last_arrival);
}

static int
RecvBase_set_last_arrival(RecvBase *self, PyObject *value, void *closure)
{
    if (value == NULL || value == Py_None) {
        self->has_last_arrival = 0;
        return 0;
    }
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    self->last_arrival = v;
    self->has_last_arrival = 1;
    return 0;
}

static PyObject *
RecvBase_get_window(RecvBase *self, void *closure)
{
    PyObject *hi = PyLong_FromUnsignedLongLong(self->win_hi);
    PyObject *lo = PyLong_FromUnsignedLongLong(self->win_lo);
    PyObject *sixty_four = PyLong_FromLong(64);
    PyObject *shifted = NULL, *res = NULL;
    if (hi && lo && sixty_four && (shifted = PyNumber_Lshift(hi, sixty_four)))
        res = PyNumber_Or(shifted, lo);
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(sixty_four);
    Py_XDECREF(shifted);
    return res;
}

static int
RecvBase_set_window(RecvBase *self, PyObject *value, void *closure)
{
    if (value == NULL || !PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "_window must be an int");
        return -1;
    }
    PyObject *sixty_four = PyLong_FromLong(64);
    if (sixty_four == NULL)
        return -1;
    PyObject *hi = PyNumber_Rshift(value, sixty_four);
    Py_DECREF(sixty_four);
    if (hi == NULL)
        return -1;
    uint64_t h = PyLong_AsUnsignedLongLongMask(hi);
    Py_DECREF(hi);
    uint64_t l = PyLong_AsUnsignedLongLongMask(value);
    if (PyErr_Occurred())
        return -1;
    self->win_hi = h;
    self->win_lo = l;
    return 0;
}

static int
RecvBase_init_fields(RecvBase *self)
{
    self->ssrc = -1;
    return 0;
}

static PyObject *
RecvBase_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    RecvBase *self = (RecvBase *)type->tp_alloc(type, 0);
    if (self != NULL)
        RecvBase_init_fields(self);
    return (PyObject *)self;
}

#define M(name, type, field) {name, type, offsetof(RecvBase, field), 0, NULL}
static PyMemberDef RecvBase_members[] = {
    M("_max_seq", T_INT, max_seq),
    M("_probation", T_INT, probation),
    M("_cycles", T_LONGLONG, cycles),
    M("_unique", T_LONGLONG, unique),
    M("packets_received", T_LONGLONG, packets_received),
    M("bytes_received", T_LONGLONG, bytes_received),
    M("_jitter_valid", T_BOOL, jitter_valid),
    M("jitter", T_DOUBLE, jitter),
    M("jitter_max", T_DOUBLE, jitter_max),
    M("_last_ts", T_LONGLONG, last_ts),
    M("_last_arrival_ts", T_DOUBLE, last_arrival_ts),
    M("clock_rate", T_LONGLONG, clock_rate),
    M("invalid_packets", T_LONGLONG, invalid_packets),
    {NULL},
};
#undef M

static PyGetSetDef RecvBase_getset[] = {
    {"ssrc", (getter)RecvBase_get_ssrc, (setter)RecvBase_set_ssrc, NULL, NULL},
    {"last_arrival", (getter)RecvBase_get_last_arrival, (setter)RecvBase_set_last_arrival, NULL,
     NULL},
    {"_window", (getter)RecvBase_get_window, (setter)RecvBase_set_window, NULL, NULL},
    {NULL},
};

static PyMethodDef RecvBase_methods[] = {
    {"receive_rtp", (PyCFunction)(void (*)(void))RecvBase_receive_rtp, METH_FASTCALL,
     "receive_rtp(data, now) -> payload type, -1 if invalid (fast path in C, else "
     "self._receive_slow(data, now))."},
    {NULL},
};

static PyTypeObject RecvBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sipswarm._rtpcore.RecvBase",
    .tp_basicsize = sizeof(RecvBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Fast-path fields and receive_rtp of RtpReceiveStats (RFC 3550 A.1, A.8).",
    .tp_new = RecvBase_new,
    .tp_members = RecvBase_members,
    .tp_getset = RecvBase_getset,
    .tp_methods = RecvBase_methods,
};

/* ---------------------------------------------------------------- WriterBase, SendBase */

typedef struct {
    PyObject_HEAD
    int b1;
    int b1_next;
    int sequence;
    long long ssrc;
    long long timestamp;
    long long timestamp_step;
} WriterBase;

/* Header of the next packet into p[0..11]; advances the writer (RFC 3550 5.1). */
static void
writer_next_header(WriterBase *w, unsigned char *p)
{
    int seq = w->sequence;
    long long ts = w->timestamp;
    long long ssrc = w->ssrc;
    p[0] = 0x80;
    p[1] = (unsigned char)w->b1_next;
    p[2] = (unsigned char)(seq >> 8);
    p[3] = (unsigned char)seq;
    p[4] = (unsigned char)(ts >> 24);
    p[5] = (unsigned char)(ts >> 16);
    p[6] = (unsigned char)(ts >> 8);
    p[7] = (unsigned char)ts;
    p[8] = (unsigned char)(ssrc >> 24);
    p[9] = (unsigned char)(ssrc >> 16);
    p[10] = (unsigned char)(ssrc >> 8);
    p[11] = (unsigned char)ssrc;
    w->b1_next = w->b1;
    w->sequence = (seq + 1) & 0xFFFF;
    w->timestamp = (ts + w->timestamp_step) & 0xFFFFFFFFLL;
}

/* RtpPacketWriter.write: the next packet around `payload` as a new bytes object. */
static PyObject *
WriterBase_write(WriterBase *self, PyObject *payload)
{
    Py_buffer view;
    if (PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, 12 + view.len);
    if (out != NULL) {
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
        writer_next_header(self, p);
        memcpy(p + 12, view.buf, (size_t)view.len);
    }
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef WriterBase_methods[] = {
    {"write", (PyCFunction)WriterBase_write, METH_O,
     "write(payload) -> bytes: the next packet around payload (sequence, timestamp advance)."},
    {NULL},
};

static PyMemberDef WriterBase_members[] = {
    {"_b1", T_INT, offsetof(WriterBase, b1), 0, NULL},
    {"_b1_next", T_INT, offsetof(WriterBase, b1_next), 0, NULL},
    {"sequence", T_INT, offsetof(WriterBase, sequence), 0, NULL},
    {"ssrc", T_LONGLONG, offsetof(WriterBase, ssrc), 0, NULL},
    {"timestamp", T_LONGLONG, offsetof(WriterBase, timestamp), 0, NULL},
    {"timestamp_step", T_LONGLONG, offsetof(WriterBase, timestamp_step), 0, NULL},
    {NULL},
};

static PyTypeObject WriterBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sipswarm._rtpcore.WriterBase",
    .tp_basicsize = sizeof(WriterBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Header state of RtpPacketWriter (RFC 3550 5.1).",
    .tp_new = PyType_GenericNew,
    .tp_members = WriterBase_members,
    .tp_methods = WriterBase_methods,
};

typedef struct {
    PyObject_HEAD
    long long packets_sent;
    long long bytes_sent;
    long long send_errors;
} SendBase;

static PyMemberDef SendBase_members[] = {
    {"packets_sent", T_LONGLONG, offsetof(SendBase, packets_sent), 0, NULL},
    {"bytes_sent", T_LONGLONG, offsetof(SendBase, bytes_sent), 0, NULL},
    {"send_errors", T_LONGLONG, offsetof(SendBase, send_errors), 0, NULL},
    {NULL},
};

static PyTypeObject SendBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sipswarm._rtpcore.SendBase",
    .tp_basicsize = sizeof(SendBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Send counters of RtpSendStats.",
    .tp_new = PyType_GenericNew,
    .tp_members = SendBase_members,
};

/* ---------------------------------------------------------------- Sender */

typedef struct {
    PyObject_HEAD
    WriterBase *writer;
    SendBase *stats;
    PyObject *fallback;
    PyObject *buffer; /* bytes holding `frames` frames of `frame_bytes`, or NULL */
    Py_ssize_t frame_bytes;
    long long frames;
    int fd;
    long long frame_index;
    double last_due;
    vectorcallfunc vectorcall;
} Sender;

/* One frame: what RtpSession._send_frame does for a plain session, without Python. */
static PyObject *
Sender_vectorcall(PyObject *obj, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Sender *self = (Sender *)obj;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "Sender(due) takes one positional argument");
        return NULL;
    }
    if (self->fd < 0 || self->buffer == NULL)
        return PyObject_Vectorcall(self->fallback, args, nargsf, NULL);
    double due = PyFloat_AsDouble(args[0]);
    if (due == -1.0 && PyErr_Occurred())
        return NULL;
    long long index = self->frame_index++;
    unsigned char pkt[MAX_RTP_PACKET];
    writer_next_header(self->writer, pkt);
    Py_ssize_t fb = self->frame_bytes;
    memcpy(pkt + 12, PyBytes_AS_STRING(self->buffer) + (index % self->frames) * fb, fb);
    ssize_t n;
    do {
        n = send(self->fd, pkt, (size_t)(12 + fb), MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0) { /* buffer full or an ICMP error report: counted, as the Python path does */
        self->stats->send_errors++;
        Py_RETURN_NONE;
    }
    self->stats->packets_sent++;
    self->stats->bytes_sent += 12 + fb;
    self->last_due = due;
    Py_RETURN_NONE;
}

static PyObject *
Sender_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"writer", "stats", "fallback", NULL};
    PyObject *writer, *stats, *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O:Sender", kwlist, &WriterBaseType, &writer,
                                     &SendBaseType, &stats, &fallback))
        return NULL;
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "Sender fallback must be callable");
        return NULL;
    }
    Sender *self = (Sender *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->writer = (WriterBase *)Py_NewRef(writer);
    self->stats = (SendBase *)Py_NewRef(stats);
    self->fallback = Py_NewRef(fallback);
    self->fd = -1;
    self->vectorcall = Sender_vectorcall;
    return (PyObject *)self;
}

static int
Sender_traverse(Sender *self, visitproc visit, void *arg)
{
    Py_VISIT(self->writer);
    Py_VISIT(self->stats);
    Py_VISIT(self->fallback);
    Py_VISIT(self->buffer);
    return 0;
}

static int
Sender_clear(Sender *self)
{
    self->fd = -1;
    Py_CLEAR(self->writer);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->buffer);
    return 0;
}

static void
Sender_dealloc(Sender *self)
{
    PyObject_GC_UnTrack(self);
    Sender_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Sender_set_source(Sender *self, PyObject *args)
{
    PyObject *buffer;
    Py_ssize_t frame_bytes;
    long long frames;
    if (!PyArg_ParseTuple(args, "OnL:set_source", &buffer, &frame_bytes, &frames))
        return NULL;
    if (buffer == Py_None) {
        Py_CLEAR(self->buffer);
        Py_RETURN_FALSE;
    }
    if (!PyBytes_Check(buffer) || frame_bytes <= 0 || frames <= 0 ||
        frame_bytes > MAX_RTP_PACKET - 12 || PyBytes_GET_SIZE(buffer) < frame_bytes * frames) {
        Py_CLEAR(self->buffer); /* not one contiguous buffer of whole frames: Python path */
        Py_RETURN_FALSE;
    }
    Py_XSETREF(self->buffer, Py_NewRef(buffer));
    self->frame_bytes = frame_bytes;
    self->frames = frames;
    Py_RETURN_TRUE;
}

static PyMemberDef Sender_members[] = {
    {"fd", T_INT, offsetof(Sender, fd), 0, "connected socket to send on; -1: call the fallback"},
    {"frame_index", T_LONGLONG, offsetof(Sender, frame_index), 0, "next frame of the source"},
    {"last_due", T_DOUBLE, offsetof(Sender, last_due), 0, "schedule of the last frame sent"},
    {NULL},
};

static PyMethodDef Sender_methods[] = {
    {"set_source", (PyCFunction)Sender_set_source, METH_VARARGS,
     "set_source(buffer | None, frame_bytes, frames) -> True when the C path can slice it."},
    {NULL},
};

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sipswarm._rtpcore.Sender",
    .tp_basicsize = sizeof(Sender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Sender(writer, stats, fallback): the media clock's per-session send callback.",
    .tp_new = Sender_new,
    .tp_dealloc = (destructor)Sender_dealloc,
    .tp_traverse = (traverseproc)Sender_traverse,
    .tp_clear = (inquiry)Sender_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Sender, vectorcall),
    .tp_members = Sender_members,
    .tp_methods = Sender_methods,
};

#include "_rtpcore_poller.h"

/* ---------------------------------------------------------------- module */

static struct PyModuleDef rtpcore_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sipswarm._rtpcore",
    .m_doc = "The per-packet RTP path in C (see the comment at the top of _rtpcore.c).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__rtpcore(void)
{
    str_receive_slow = PyUnicode_InternFromString("_receive_slow");
    if (str_receive_slow == NULL)
        return NULL;
    PyTypeObject *types[] = {&RecvBaseType, &WriterBaseType, &SendBaseType, &SenderType,
                             &PollerType};
    PyObject *m = PyModule_Create(&rtpcore_module);
    if (m == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (PyType_Ready(types[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
        const char *dot = strrchr(types[i]->tp_name, '.');
        if (PyModule_AddObjectRef(m, dot + 1, (PyObject *)types[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
