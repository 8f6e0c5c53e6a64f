"""Detection mAP under the ActivityNet protocol, and its JSON front end."""
