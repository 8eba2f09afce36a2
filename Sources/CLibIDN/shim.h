#include <stddef.h>
#include <stringprep.h>

// libidn exposes the XMPP profiles as function-like macros over extern arrays; these inline functions
// give Swift one callable per profile. Each prepares the NUL-terminated UTF-8 string in `buffer` in
// place (capacity `capacity` bytes including the NUL) with flags 0 (unassigned code points allowed),
// exactly as Prosody's util.encodings.stringprep does, and returns a Stringprep_rc.
static inline int ks_xmpp_nodeprep(char *buffer, size_t capacity) {
    return stringprep(buffer, capacity, (Stringprep_profile_flags)0, stringprep_xmpp_nodeprep);
}
static inline int ks_nameprep(char *buffer, size_t capacity) {
    return stringprep(buffer, capacity, (Stringprep_profile_flags)0, stringprep_nameprep);
}
static inline int ks_xmpp_resourceprep(char *buffer, size_t capacity) {
    return stringprep(buffer, capacity, (Stringprep_profile_flags)0, stringprep_xmpp_resourceprep);
}
