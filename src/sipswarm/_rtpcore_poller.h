/*
 * sipswarm._rtpcore.Poller (included by _rtpcore.c): one epoll of every plain, connected RTP
 * socket of a media engine, read in C.
 *
 * The engine registers poller.fileno() once with loop.add_reader(fd, poller.poll). Each wake-up
 * asks epoll for up to max_events ready sockets without blocking and reads one datagram from
 * each (level-triggered: what is left comes at the next wake-up, as with one add_reader per
 * socket). The arrival time is clock_gettime(CLOCK_MONOTONIC) per datagram, the clock of
 * time.monotonic(). A datagram whose payload type is the session's telephone-event type goes
 * to the session's on_packet(bytes) (RFC 4733 events must not feed the jitter); everything
 * else to the RecvBase, whose own slow path handles what the fast path does not take. A recv
 * error (EAGAIN after a spurious wake-up, an ICMP error report) calls on_error().
 */

typedef struct {
    PyObject *stats; /* a RecvBase */
    PyObject *on_packet;
    PyObject *on_error;
    int dtmf_pt;
} PollEntry;

typedef struct {
    PyObject_HEAD
    int epfd;
    int max_events;
    PollEntry **entries; /* indexed by fd */
    int n_entries;
    Py_ssize_t registered;
    long long packets;
    struct epoll_event *events;
} Poller;

static void
entry_free(PollEntry *e)
{
    Py_XDECREF(e->stats);
    Py_XDECREF(e->on_packet);
    Py_XDECREF(e->on_error);
    PyMem_Free(e);
}

static PyObject *
Poller_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_events", NULL};
    int max_events = 512;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i:Poller", kwlist, &max_events))
        return NULL;
    if (max_events < 1 || max_events > 65536) {
        PyErr_Format(PyExc_ValueError, "Poller max_events must be 1-65536, got %d", max_events);
        return NULL;
    }
    Poller *self = (Poller *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->epfd = -1;
    self->max_events = max_events;
    self->events = PyMem_Calloc((size_t)max_events, sizeof(struct epoll_event));
    if (self->events == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
Poller_release(Poller *self)
{
    for (int i = 0; i < self->n_entries; i++) {
        if (self->entries[i] != NULL) {
            PollEntry *e = self->entries[i];
            self->entries[i] = NULL;
            entry_free(e);
        }
    }
    PyMem_Free(self->entries);
    self->entries = NULL;
    self->n_entries = 0;
    self->registered = 0;
    if (self->epfd >= 0) {
        close(self->epfd);
        self->epfd = -1;
    }
}

static void
Poller_dealloc(Poller *self)
{
    Poller_release(self);
    PyMem_Free(self->events);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Poller_register(Poller *self, PyObject *args)
{
    int fd, dtmf_pt;
    PyObject *stats, *on_packet, *on_error;
    if (!PyArg_ParseTuple(args, "iO!iOO:register", &fd, &RecvBaseType, &stats, &dtmf_pt,
                          &on_packet, &on_error))
        return NULL;
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "Poller is closed");
        return NULL;
    }
    if (fd < 0 || !PyCallable_Check(on_packet) || !PyCallable_Check(on_error)) {
        PyErr_SetString(PyExc_ValueError, "register(fd >= 0, stats, dtmf_pt, callable, callable)");
        return NULL;
    }
    if (fd >= self->n_entries) {
        int n = fd + 1 > 2 * self->n_entries ? fd + 1 : 2 * self->n_entries;
        PollEntry **grown = PyMem_Realloc(self->entries, (size_t)n * sizeof(PollEntry *));
        if (grown == NULL)
            return PyErr_NoMemory();
        memset(grown + self->n_entries, 0, (size_t)(n - self->n_entries) * sizeof(PollEntry *));
        self->entries = grown;
        self->n_entries = n;
    }
    PollEntry *e = PyMem_Calloc(1, sizeof(PollEntry));
    if (e == NULL)
        return PyErr_NoMemory();
    e->stats = Py_NewRef(stats);
    e->on_packet = Py_NewRef(on_packet);
    e->on_error = Py_NewRef(on_error);
    e->dtmf_pt = dtmf_pt;
    PollEntry *old = self->entries[fd];
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    /* MOD on a known fd re-arms it even if a closed socket's fd was reused under us */
    int rc = old != NULL ? epoll_ctl(self->epfd, EPOLL_CTL_MOD, fd, &ev) : -1;
    if (rc < 0 && epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 && errno != EEXIST) {
        entry_free(e);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (old == NULL)
        self->registered++;
    self->entries[fd] = e; /* re-registering updates the entry (a re-INVITE's new event PT) */
    if (old != NULL)
        entry_free(old);
    Py_RETURN_NONE;
}

static PyObject *
Poller_unregister(Poller *self, PyObject *arg)
{
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd >= self->n_entries || self->entries[fd] == NULL)
        Py_RETURN_FALSE;
    PollEntry *e = self->entries[fd];
    self->entries[fd] = NULL; /* a datagram of this batch still pending for fd is skipped */
    self->registered--;
    if (self->epfd >= 0)
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL);
    entry_free(e);
    Py_RETURN_TRUE;
}

/* Call a session callback; the entry may be replaced or freed by it, so hold our own refs. */
static int
call_entry(PyObject *callable, PyObject *arg)
{
    Py_INCREF(callable);
    PyObject *res = arg ? PyObject_CallOneArg(callable, arg) : PyObject_CallNoArgs(callable);
    Py_DECREF(callable);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

static int
poll_one(Poller *self, int fd, unsigned char *buf)
{
    PollEntry *e = self->entries[fd];
    ssize_t n;
    do {
        n = recv(fd, buf, RECV_SIZE, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return call_entry(e->on_error, NULL);
    self->packets++;
    if (n > 1 && (buf[1] & 0x7F) == e->dtmf_pt) {
        PyObject *data = PyBytes_FromStringAndSize((const char *)buf, n);
        if (data == NULL)
            return -1;
        int rc = call_entry(e->on_packet, data);
        Py_DECREF(data);
        return rc;
    }
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double now = (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
    RecvBase *stats = (RecvBase *)e->stats;
    if (recv_fast(stats, buf, n, now) != 1000)
        return 0;
    PyObject *data = PyBytes_FromStringAndSize((const char *)buf, n);
    if (data == NULL)
        return -1;
    Py_INCREF(stats);
    int pt = recv_slow(stats, data, now);
    Py_DECREF(stats);
    Py_DECREF(data);
    return pt == -2 ? -1 : 0;
}

static PyObject *
Poller_poll(Poller *self, PyObject *Py_UNUSED(ignored))
{
    if (self->epfd < 0)
        return PyLong_FromLong(0);
    int ready = epoll_wait(self->epfd, self->events, self->max_events, 0);
    if (ready < 0) {
        if (errno == EINTR)
            return PyLong_FromLong(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    unsigned char buf[RECV_SIZE];
    for (int i = 0; i < ready; i++) {
        int fd = self->events[i].data.fd;
        if (fd >= self->n_entries || self->entries[fd] == NULL)
            continue; /* unregistered by a callback earlier in this batch */
        if (poll_one(self, fd, buf) < 0)
            return NULL;
    }
    return PyLong_FromLong(ready);
}

static PyObject *
Poller_fileno(Poller *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->epfd);
}

static PyObject *
Poller_close(Poller *self, PyObject *Py_UNUSED(ignored))
{
    Poller_release(self);
    Py_RETURN_NONE;
}

static PyObject *
Poller_len(Poller *self, void *closure)
{
    return PyLong_FromSsize_t(self->registered);
}

static PyMemberDef Poller_members[] = {
    {"packets", T_LONGLONG, offsetof(Poller, packets), READONLY, "datagrams read so far"},
    {NULL},
};

static PyGetSetDef Poller_getset[] = {
    {"registered", (getter)Poller_len, NULL, "sockets registered", NULL},
    {NULL},
};

static PyMethodDef Poller_methods[] = {
    {"register", (PyCFunction)Poller_register, METH_VARARGS,
     "register(fd, stats, dtmf_pt, on_packet, on_error): read fd in C from now on."},
    {"unregister", (PyCFunction)Poller_unregister, METH_O,
     "unregister(fd) -> True if it was registered. Call before the socket is closed."},
    {"poll", (PyCFunction)Poller_poll, METH_NOARGS,
     "poll() -> ready sockets handled: the loop's reader callback for fileno()."},
    {"fileno", (PyCFunction)Poller_fileno, METH_NOARGS, "the epoll descriptor (-1 closed)"},
    {"close", (PyCFunction)Poller_close, METH_NOARGS, "close the epoll, drop every entry"},
    {NULL},
};

static PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sipswarm._rtpcore.Poller",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Poller(max_events=512): one epoll of plain connected RTP sockets, read in C.",
    .tp_new = Poller_new,
    .tp_dealloc = (destructor)Poller_dealloc,
    .tp_members = Poller_members,
    .tp_getset = Poller_getset,
    .tp_methods = Poller_methods,
};
