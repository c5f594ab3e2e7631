#!/bin/sh
# Write the broker ACL for the sites one broker serves, from deploy/mosquitto.acl (docs/security.md, "Deploying the
# broker"):
#
#   deploy/acl-for-sites.sh site1 site2 site3 > vpp.acl
#   install -m 0640 -g mosquitto vpp.acl /etc/mosquitto/vpp.acl
#
# mosquitto.acl holds the agent's block for site1, between the lines "# BEGIN site" and "# END site". The output is
# that file with the block repeated once per site given, "site1" replaced by the site id; everything else (the
# publishers, readers, bridges) is copied as it stands. ACL_TEMPLATE=path reads another template.
#
# A site id is the agent's MQTT user name and the <site> of its topic_prefix "vpp/<site>": a letter or digit, then
# letters, digits, "_", "-" and "." only (no "+", "#", "/" or spaces, which would change what a topic rule matches),
# each given once, and not the name of a "user" the template already has (a site called market-desk would give that
# role the agent's rights).
set -eu

template=${ACL_TEMPLATE:-$(dirname "$0")/mosquitto.acl}

if [ "$#" -eq 0 ]; then
    echo "usage: $0 SITE [SITE ...] > vpp.acl   (e.g. $0 site1 site2)" >&2
    exit 2
fi
[ -r "$template" ] || { echo "$0: cannot read the template $template" >&2; exit 1; }

# the template must hold exactly one block, with exactly one "user site1" line in it
blocks=$(grep -c '^# BEGIN site$' "$template" || true)
ends=$(grep -c '^# END site$' "$template" || true)
users=$(sed -n '/^# BEGIN site$/,/^# END site$/p' "$template" | grep -c '^user site1$' || true)
if [ "$blocks" != 1 ] || [ "$ends" != 1 ] || [ "$users" != 1 ]; then
    echo "$0: $template needs one '# BEGIN site' ... '# END site' block with one 'user site1' line" >&2
    exit 1
fi
# the users outside the block: roles a site id must not take
roles=$(sed '/^# BEGIN site$/,/^# END site$/d' "$template" |
    sed -n 's/^user[[:space:]]\{1,\}\(.*[^[:space:]]\)[[:space:]]*$/\1/p')

seen=" "
for site in "$@"; do
    case $site in
        "" | [!A-Za-z0-9]* | *[!A-Za-z0-9_.-]*)
            echo "$0: site id '$site': a letter or digit, then letters, digits, '_', '-' and '.' only" >&2
            exit 1
            ;;
    esac
    for role in $roles; do
        if [ "$site" = "$role" ]; then
            echo "$0: site id '$site' is the name of a role in $template" >&2
            exit 1
        fi
    done
    case $seen in
        *" $site "*)
            echo "$0: site id '$site' is given twice" >&2
            exit 1
            ;;
    esac
    seen="$seen$site "
done

# the ids hold no character that awk's gsub treats specially in a replacement ("&", "\"): checked above
awk -v sites="$*" '
    /^# BEGIN site$/ { inside = 1; block = ""; next }
    /^# END site$/ {
        inside = 0
        n = split(sites, list, " ")
        for (i = 1; i <= n; i++) {
            text = block
            gsub(/site1/, list[i], text)
            printf "# site %s\n%s", list[i], text
            if (i < n) printf "\n"
        }
        next
    }
    inside { block = block $0 "\n"; next }
    { print }
' "$template"
