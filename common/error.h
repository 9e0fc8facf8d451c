// Error values that carry an errno all the way to the FUSE or CLI boundary.
//
// Every fallible function returns ErrorOr<T>. The errno inside an Error is what the
// caller will finally see: when it came from the guest kernel it is passed through
// unchanged (ENOENT from the guest is ENOENT to `cat`), so code in between must never
// rewrite it, only add context to the message.
#pragma once

#include <cerrno>
#include <cstring>
#include <expected>
#include <string>
#include <utility>

namespace cloudvmi {

class Error {
  public:
    enum class Origin {
        kHost,   // our own failure (socket, timeout, protocol, bad input)
        kGuest,  // the guest kernel returned -errno for a redirected syscall
        // We declined the request on purpose (a change we will not make safely, a bad
        // name, a file or directory beyond a cap): the errno is the answer, never a
        // failure to be masked as EIO.
        kRefused,
        // The VM cannot be served now and the errno says why (EAGAIN: paused by its
        // owner, or its shadow is being replaced; EBUSY: another cloudvmi holds it).
        kUnavailable,
    };

    Error(int code, std::string message, Origin origin = Origin::kHost)
        : code_(code > 0 ? code : EIO), message_(std::move(message)), origin_(origin) {}

    static Error guest(int code, std::string message) {
        return Error(code, std::move(message), Origin::kGuest);
    }
    static Error refusal(int code, std::string message) {
        return Error(code, std::move(message), Origin::kRefused);
    }
    static Error unavailable(int code, std::string message) {
        return Error(code, std::move(message), Origin::kUnavailable);
    }

    int code() const { return code_; }
    const std::string& message() const { return message_; }
    bool from_guest() const { return origin_ == Origin::kGuest; }
    bool refused() const { return origin_ == Origin::kRefused; }
    bool unavailable() const { return origin_ == Origin::kUnavailable; }

    // "context: No such file or directory"
    std::string describe() const {
        std::string s = message_;
        if (!s.empty()) s += ": ";
        s += std::strerror(code_);
        return s;
    }

    // Prepends context while keeping the errno and its origin.
    Error with_context(const std::string& context) const {
        return Error(code_, message_.empty() ? context : context + ": " + message_, origin_);
    }

  private:
    int code_;
    std::string message_;
    Origin origin_;
};

template <class T>
using ErrorOr = std::expected<T, Error>;

// Errors after which the connection to the VM cannot be trusted: the guest state is
// unknown, not changed. Such an error must never be taken as news about the guest.
inline bool is_transport_error(const Error& e) {
    if (e.from_guest()) return false;
    switch (e.code()) {
        case ECONNRESET:
        case ENOTCONN:
        case EPIPE:
        case EPROTO:
            return true;
        default:
            return false;
    }
}

inline std::unexpected<Error> make_error(int code, std::string message) {
    return std::unexpected(Error(code, std::move(message)));
}

inline std::unexpected<Error> refuse(int code, std::string message) {
    return std::unexpected(Error::refusal(code, std::move(message)));
}

inline std::unexpected<Error> guest_error(int code, std::string message) {
    return std::unexpected(Error::guest(code, std::move(message)));
}

// The errno of the last failed libc call, with context.
inline std::unexpected<Error> errno_error(std::string message) {
    int saved = errno;
    return std::unexpected(Error(saved, std::move(message)));
}

}  // namespace cloudvmi

// Propagates an error out of the enclosing function, otherwise yields the value.
// Uses a GNU statement expression, like SerenityOS's TRY.
#define TRY(expr)                                                   \
    ({                                                              \
        auto&& _try_result = (expr);                                \
        if (!_try_result) [[unlikely]]                              \
            return std::unexpected(std::move(_try_result).error()); \
        std::move(_try_result).value();                             \
    })

// Same, with context added to the message of a propagated error.
#define TRY_CTX(expr, context)                                                            \
    ({                                                                                    \
        auto&& _try_result = (expr);                                                      \
        if (!_try_result) [[unlikely]]                                                    \
            return std::unexpected(std::move(_try_result).error().with_context(context)); \
        std::move(_try_result).value();                                                   \
    })
