twistd -n tcpsocket --allow 'localhost:143' --deny '*:25' --allow '*:*'
