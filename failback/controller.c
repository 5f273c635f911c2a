/* controller: placeholder */
