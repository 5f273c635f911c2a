#include "ctl.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "util.h"

static int unix_addr(const char *path, struct sockaddr_un *sa)
{
        if (strlen(path) >= sizeof(sa->sun_path))
                return -ENAMETOOLONG;
        memset(sa, 0, sizeof(*sa));
        sa->sun_family = AF_UNIX;
        strcpy(sa->sun_path, path);
        return 0;
}

int ctl_read(int fd, int timeout_ms, json_object **ret)
{
        uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
        size_t cap = 4096, len = 0;
        char *buf = malloc(cap);
        int r = 0;
        if (!buf)
                return -ENOMEM;
        for (;;) {
                if (len + 1 >= cap) {
                        if (cap >= CTL_MAX_MSG) {
                                r = -EMSGSIZE;
                                goto out;
                        }
                        char *nb = realloc(buf, cap * 2);
                        if (!nb) {
                                r = -ENOMEM;
                                goto out;
                        }
                        buf = nb;
                        cap *= 2;
                }
                ssize_t n = read(fd, buf + len, cap - len - 1);
                if (n > 0) {
                        len += (size_t)n;
                        if (memchr(buf + len - n, '\n', (size_t)n))
                                break;
                        continue;
                }
                if (n == 0)
                        break;
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN) {
                        r = -errno;
                        goto out;
                }
                r = wait_fd(fd, POLLIN, deadline);
                if (r < 0)
                        goto out;
        }
        buf[len] = 0;
        char *nl = strchr(buf, '\n');
        if (nl)
                *nl = 0;
        json_object *o = json_tokener_parse(buf);
        if (!o || !json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                r = -EBADMSG;
                goto out;
        }
        *ret = o;
out:
        free(buf);
        return r;
}

int ctl_write(int fd, json_object *o, int timeout_ms)
{
        uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
        const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
        int r = write_full(fd, s, strlen(s), deadline);
        if (r == 0)
                r = write_full(fd, "\n", 1, deadline);
        return r;
}

int ctl_call(const char *socket_path, json_object *req, int timeout_ms, json_object **ret_resp)
{
        struct sockaddr_un sa;
        int r = unix_addr(socket_path, &sa);
        if (r < 0)
                return r;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                r = -errno;
                goto out;
        }
        set_nonblock(fd, true);
        r = ctl_write(fd, req, timeout_ms);
        if (r == 0)
                r = ctl_read(fd, timeout_ms, ret_resp);
out:
        close(fd);
        return r;
}
